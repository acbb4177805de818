"""Embedding files: the layouts the WebUI (and diffusers, kohya, ComfyUI) load.

Writing: safetensors with string metadata; one-encoder models store
`{"emb_params": [n, d]}`, SDXL stores exactly `{"clip_l": [n, 768],
"clip_g": [n, 1280]}`. All files of a run are first written to temporary files
beside their targets and then renamed, so an error or a crash never leaves a
half-written embedding the WebUI would try to load.

Reading: the same files plus the WebUI's own `.pt` layout and diffusers'
`learned_embeds` files, loaded with `weights_only=True` (no pickle code runs).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from captinv.backends.base import Vectors
from captinv.errors import CaptinvError, NameTakenError

SDXL_KEYS = frozenset({"clip_l", "clip_g"})


@dataclass
class EmbeddingFile:
    path: Path
    vectors: Vectors
    metadata: dict[str, str]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def vector_count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]


def write_embeddings(files: list[EmbeddingFile], *, overwrite: bool) -> None:
    """Write all files or none: check every target, stage to temp files, then rename."""
    if not overwrite:
        taken = [f.path.name for f in files if f.path.exists()]
        if taken:
            raise NameTakenError(
                f"{', '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; "
                "choose another name or allow overwriting."
            )
    staged: list[tuple[str, Path]] = []
    try:
        for item in files:
            item.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=f".{item.name}.", suffix=".tmp", dir=item.path.parent)
            os.close(handle)
            staged.append((temp, item.path))
            tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in item.vectors.items()}
            save_file(tensors, temp, metadata=item.metadata)
        for temp, target in staged:
            os.replace(temp, target)
    finally:
        for temp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)


def _vectors_from_dict(data: dict, path: Path) -> Vectors:
    if "string_to_param" in data:  # the WebUI's .pt layout
        params = data["string_to_param"]
        if len(params) != 1:
            raise CaptinvError(f"{path.name} holds {len(params)} terms; an embedding file must hold one.")
        return {"emb_params": next(iter(params.values()))}
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if tensors.keys() >= SDXL_KEYS:
        return {key: tensors[key] for key in ("clip_l", "clip_g")}
    if len(tensors) == 1:  # emb_params, or diffusers' {token: tensor}
        value = next(iter(tensors.values()))
        return {"emb_params": value if value.dim() == 2 else value.unsqueeze(0)}
    raise CaptinvError(f"{path.name} is not an embedding: found keys {sorted(data)}.")


def read_embedding(path: Path) -> EmbeddingFile:
    path = Path(path)
    if not path.is_file():
        raise CaptinvError(f"No such file: {path}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as handle:
            data = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() or {}
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for foreign pickles
            raise CaptinvError(f"{path.name} could not be read safely: {err}") from err
        metadata = {k: str(v) for k, v in data.items() if k in ("name", "step", "sd_checkpoint_name")}
    vectors = {k: v.float() for k, v in _vectors_from_dict(data, path).items()}
    return EmbeddingFile(path, vectors, metadata)


def check_layout(vectors: Vectors, widths: dict[str, int]) -> None:
    """The WebUI's loading rules: one tensor, or exactly clip_l + clip_g; widths match the model."""
    if set(vectors) != set(widths):
        raise CaptinvError(
            f"Embedding keys {sorted(vectors)} do not fit this model (needs {sorted(widths)})."
        )
    for key, value in vectors.items():
        if value.dim() != 2 or value.shape[1] != widths[key]:
            raise CaptinvError(
                f"'{key}' has shape {tuple(value.shape)}; this model needs [n, {widths[key]}]."
            )
