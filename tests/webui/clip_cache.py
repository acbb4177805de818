"""An offline Hugging Face cache holding `openai/clip-vit-large-patch14`'s tokenizer and a small config.

The WebUI's SD1/SDXL CLIP-L embedder asks the Hub for that model's tokenizer and config.json
(the weights come from the checkpoint). The tokenizer here is the real CLIP BPE from
open_clip's bundled vocabulary; the config keeps the real width (768) with two layers.
"""

from __future__ import annotations

import json
from pathlib import Path

from captinv.clip_vocab import write_clip_tokenizer_files

REVISION = "0" * 40
TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 1024,
    "num_hidden_layers": 2,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
    "projection_dim": 768,
}


FULL_TEXT = {"intermediate_size": 3072, "num_hidden_layers": 12}  # CLIP-L's real depth, for timing


def prepare_clip_cache(hf_home: Path, full: bool = False) -> Path:
    repo = hf_home / "hub" / "models--openai--clip-vit-large-patch14"
    snapshot = repo / "snapshots" / REVISION
    write_clip_tokenizer_files(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (snapshot / "special_tokens_map.json").write_text(json.dumps(special))
    (snapshot / "tokenizer_config.json").write_text(
        json.dumps(special | {"model_max_length": 77, "do_lower_case": True})
    )
    config = {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": 768,
        "text_config": TEXT_CONFIG | (FULL_TEXT if full else {}) | {"model_type": "clip_text_model"},
        "vision_config": {
            "hidden_size": 64,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
            "projection_dim": 768,
        },
    }
    (snapshot / "config.json").write_text(json.dumps(config))
    return hf_home
