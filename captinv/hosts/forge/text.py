"""Forge's text path: per-encoder `ClassicTextProcessingEngine`s, each with its own embedding
database, and the conditioning they make.

An SD1/SD2 model has one engine, SDXL one for CLIP-L and one for CLIP-G; a name in a prompt
means whatever each engine's database holds for it, and the engine's token-embedding wrapper
splices those vectors (differentiably) exactly as it does in txt2img. So a run registers its
live vectors in every engine and encodes through the engines themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from backend.text_processing import emphasis
from backend.text_processing.textual_inversion import Embedding
from modules import shared

from captinv.backends.base import Conditioning, Vectors

ONE_ENCODER_KEY = "emb_params"  # the file key of one-encoder embeddings (SD1, SD2)


def text_engines(model) -> list[tuple[str, object]]:
    """(file key, engine) of each text engine of a loaded Forge model, in file-key order; empty
    for models without CLIP engines (or before a model is loaded)."""
    if hasattr(model, "text_processing_engine_l") and hasattr(model, "text_processing_engine_g"):
        return [("clip_l", model.text_processing_engine_l), ("clip_g", model.text_processing_engine_g)]
    if hasattr(model, "text_processing_engine"):
        return [(ONE_ENCODER_KEY, model.text_processing_engine)]
    return []


def token_table(engine) -> torch.Tensor:
    """The engine's token-embedding weight (under Forge's textual-inversion wrapper)."""
    return engine.text_encoder.transformer.text_model.embeddings.token_embedding.wrapped.weight


def embedding_vec(vectors: Vectors) -> torch.Tensor | dict[str, torch.Tensor]:
    """An `Embedding.vec`: one tensor for one encoder, the per-encoder dict for SDXL (each engine
    picks its own key)."""
    return vectors[ONE_ENCODER_KEY] if ONE_ENCODER_KEY in vectors else dict(vectors)


def make_embedding(name: str, vectors: Vectors) -> Embedding:
    embedding = Embedding(embedding_vec(vectors), name)
    embedding.vectors = next(iter(vectors.values())).shape[0]
    embedding.shape = sum(v.shape[1] for v in vectors.values())
    return embedding


def register(model, embedding: Embedding) -> None:
    for _key, engine in text_engines(model):
        engine.embeddings.register_embedding(embedding)


def unregister(model, name: str) -> None:
    for _key, engine in text_engines(model):
        if name in engine.embeddings.word_embeddings:
            engine.embeddings.register_embedding_by_name(None, name)


def known_names(model) -> set[str]:
    found: set[str] = set()
    for _key, engine in text_engines(model):
        found |= set(engine.embeddings.word_embeddings) | set(engine.embeddings.skipped_embeddings)
    return found


@contextmanager
def clip_skip(model, layers: int) -> Iterator[None]:
    """The engines encode from the layer clip skip picks while inside (processing sets it before
    every encoding and the engines keep the last value); the previous value is put back."""
    engines = [engine for _key, engine in text_engines(model)]
    before = [engine.clip_skip for engine in engines]
    model.set_clip_skip(layers)
    try:
        yield
    finally:
        for engine, value in zip(engines, before):
            engine.clip_skip = value


def encode(engine, prompts: list[str]) -> torch.Tensor:
    """What `ClassicTextProcessingEngine.__call__` computes (chunks, embedding fixes, emphasis),
    without its per-call side effects: a "[Textual Inversion] Used Embedding" log line (one per
    training step would flood the log) and the names it adds to the next generation's infotext."""
    engine.emphasis = emphasis.get_current_option(shared.opts.emphasis)()
    batch_chunks, _count = engine.process_texts(prompts)
    encodings = []
    for index in range(max(len(chunks) for chunks in batch_chunks)):
        batch = [chunks[index] if index < len(chunks) else engine.empty_chunk() for chunks in batch_chunks]
        engine.embeddings.fixes = [chunk.fixes for chunk in batch]
        encodings.append(engine.process_tokens([c.tokens for c in batch], [c.multipliers for c in batch]))
    encoding = torch.hstack(encodings)
    if engine.return_pooled:
        encoding.pooled = encodings[0].pooled
    return encoding


def conditioning(model, prompts: list[str], size: int) -> Conditioning:
    """The UNet's conditioning as Forge's engine builds it for a `size`-pixel square image: the
    text encoding, and for SDXL the pooled CLIP-G vector plus the size/crop embeddings
    (`StableDiffusionXL.get_learned_conditioning`, without its memory-manager call)."""
    engines = text_engines(model)
    if len(engines) == 1:
        return encode(engines[0][1], prompts)
    cond_l, cond_g = (encode(engine, prompts) for _key, engine in engines)
    pooled = cond_g.pooled
    sizes = (size, size, shared.opts.sdxl_crop_top, shared.opts.sdxl_crop_left, size, size)
    flat = torch.flatten(torch.cat([model.embedder(torch.Tensor([value])) for value in sizes]))
    flat = flat.unsqueeze(0).repeat(pooled.shape[0], 1).to(pooled)
    return {"crossattn": torch.cat([cond_l, cond_g], dim=2), "vector": torch.cat([pooled, flat], dim=1)}
