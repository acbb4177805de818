"""A real LoRA file for a test checkpoint, in the kohya layout every WebUI's builtin Lora loads.

Rank-4 deltas on the UNet's cross-attention K/V and on the first text-encoder layer's attention,
large enough to change an image, seeded. Keys come from the checkpoint's own ldm names, so one
function serves SD1, SD2 and SDXL checkpoints of any width.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

RANK = 4
_UNET = re.compile(r"^model\.diffusion_model\.(.+\.attn2\.to_[kv])\.weight$")
_TEXT = {  # checkpoint prefix -> kohya prefix (SD1, SDXL's CLIP-L)
    "cond_stage_model.transformer.text_model.": "lora_te_text_model_",
    "conditioner.embedders.0.transformer.text_model.": "lora_te1_text_model_",
}


def _lora_name(key: str) -> str | None:
    found = _UNET.match(key)
    if found:
        return "lora_unet_" + found[1].replace(".", "_")
    for prefix, kohya in _TEXT.items():
        layer = key.removeprefix(prefix).removesuffix(".weight")
        if key.startswith(prefix) and re.fullmatch(r"encoder\.layers\.0\.self_attn\.[qkv]_proj", layer):
            return kohya + layer.replace(".", "_")
    return None


def make_lora(checkpoint: Path, out: Path, strength: float = 0.5) -> Path:
    generator = torch.Generator().manual_seed(7)
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(checkpoint), "pt") as handle:
        for key in handle.keys():
            name = _lora_name(key)
            if name is None:
                continue
            out_features, in_features = handle.get_slice(key).get_shape()
            tensors[f"{name}.lora_down.weight"] = (
                torch.randn(RANK, in_features, generator=generator) * strength
            )
            tensors[f"{name}.lora_up.weight"] = (
                torch.randn(out_features, RANK, generator=generator) * strength
            )
            tensors[f"{name}.alpha"] = torch.tensor(float(RANK))
    if not tensors:
        raise ValueError(f"{checkpoint} has no layers this LoRA maker knows")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    return out
