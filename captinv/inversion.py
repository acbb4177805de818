"""One inversion from start to finish: text -> plan -> latents -> training -> files.

This is the public entry point the CLI, the WebUI tab and the API share. Names
are checked before any training so a taken name fails in a second, not after
ten minutes; files are written only when training finished (an interrupt
writes nothing).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from captinv import __version__, names
from captinv.backends.base import ModelBackend
from captinv.config import InvertConfig
from captinv.embedding_io import EmbeddingFile, write_embeddings
from captinv.errors import Interrupted
from captinv.init_vectors import WordPlan, plan_words
from captinv.latents import build_latent_cache
from captinv.trainer import Callbacks, RunReport, Trainer, TrainResult, stop_metadata

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


@dataclass(kw_only=True)
class InvertResult(RunReport):
    base: str
    combined_name: str
    word_names: list[str]
    files: list[Path]

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "combined_name": self.combined_name,
            "word_names": self.word_names,
            "files": [path.name for path in self.files],
        } | self._run_fields()


def default_base(config: InvertConfig, first_image: str | Path | None) -> str:
    """The user's name, else the first image's file stem, made safe."""
    if config.name:
        return names.base_name(config.name)
    if first_image is not None:
        return names.base_name(Path(first_image).stem)
    return "captinv"


def existing_names(out_dir: Path, backend: ModelBackend) -> set[str]:
    """Embedding names already in use: files anywhere under the folder plus what the host knows."""
    found = (
        {p.stem for p in out_dir.rglob("*") if p.suffix in EMBEDDING_SUFFIXES} if out_dir.is_dir() else set()
    )
    return found | backend.existing_names()


def prepare(backend: ModelBackend, text: str, base: str, config: InvertConfig, out_dir: Path) -> WordPlan:
    """Plan the pseudo-words and check their names before anything expensive runs."""
    plan = plan_words(backend, text, base, config)
    for name in plan.output_names():
        names.output_path(out_dir, name, ".safetensors")
    names.check_available(
        plan.output_names(), existing_names(out_dir, backend), backend.tokenize, overwrite=config.overwrite
    )
    return plan


def _metadata(
    plan: WordPlan, backend: ModelBackend, config: InvertConfig, result: TrainResult, name: str
) -> dict[str, str]:
    return {
        "format": "captinv",
        "captinv_version": __version__,
        "name": name,
        "caption": plan.text,
        "words": json.dumps([word.text for word in plan.words]),
        "sentence": plan.sentence(),
        "init": config.init,
        **stop_metadata(result, config),
        "learning_rate": str(config.learning_rate),
        "seed": str(config.seed),
        "base_model": backend.model_name,
        "model_family": backend.family,
    }


def output_files(
    plan: WordPlan,
    result: TrainResult,
    backend: ModelBackend,
    config: InvertConfig,
    out_dir: Path,
) -> list[EmbeddingFile]:
    """The combined embedding (every word in order, fixed words at their token rows) and one per trained word."""
    trained = result.embeddings
    pieces = [trained[w.name] if w.trainable else w.init for w in plan.words]
    combined = {enc.key: torch.cat([piece[enc.key] for piece in pieces]) for enc in backend.encoders}
    files = [
        EmbeddingFile(
            names.output_path(out_dir, plan.combined_name, ".safetensors"),
            combined,
            _metadata(plan, backend, config, result, plan.combined_name),
        )
    ]
    for word in plan.trainable:
        metadata = _metadata(plan, backend, config, result, word.name) | {"word": word.text}
        files.append(
            EmbeddingFile(names.output_path(out_dir, word.name, ".safetensors"), trained[word.name], metadata)
        )
    return files


def train(
    backend: ModelBackend,
    images: list[Image.Image],
    plan: WordPlan,
    config: InvertConfig,
    callbacks: Callbacks | None = None,
) -> TrainResult:
    generator = torch.Generator().manual_seed(config.seed)
    latents = build_latent_cache(
        backend,
        images,
        config.resolution or backend.default_resolution,
        flip=config.flip,
        random_crops=config.random_crops,
        generator=generator,
    )
    return Trainer(backend, plan, latents, config).run(callbacks)


def invert(
    backend: ModelBackend,
    images: list[Image.Image],
    text: str,
    config: InvertConfig,
    out_dir: Path,
    *,
    base: str,
    callbacks: Callbacks | None = None,
) -> InvertResult:
    """Train pseudo-words for `text` on `images` and write their files to `out_dir`."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    plan = prepare(backend, text, base, config, out_dir)
    result = train(backend, images, plan, config, callbacks)
    if result.interrupted:
        raise Interrupted(f"Stopped at step {result.steps} of {config.steps}; nothing was written.")
    files = output_files(plan, result, backend, config, out_dir)
    write_embeddings(files, overwrite=config.overwrite)
    return InvertResult.of_training(
        result,
        start,
        config.steps,
        base=plan.base,
        combined_name=plan.combined_name,
        word_names=[w.name for w in plan.trainable],
        files=[f.path for f in files],
        text=plan.text,
        sentence=plan.sentence(),
    )
