"""Embedding files: the layouts the WebUI (and diffusers, kohya, ComfyUI) load.

Writing: safetensors with string metadata; one-encoder models store
`{"emb_params": [n, d]}`, SDXL stores exactly `{"clip_l": [n, 768],
"clip_g": [n, 1280]}`. `EmbeddingFile.to_bytes` makes the file's bytes; the
files of a run are written together, all or nothing, by `captinv.files.write_set`.

Reading: the same files plus the WebUI's own `.pt` layout and diffusers'
`learned_embeds` files, loaded with `weights_only=True` (no pickle code runs).
Anything else is refused with a `FileFormatError` that names the file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from captinv import files
from captinv.backends.base import Vectors
from captinv.errors import CaptinvError, FileFormatError

SDXL_KEYS = frozenset({"clip_l", "clip_g"})
PERFUSION_FORMAT = "captinv.perfusion"
COVARIANCE_FORMAT = "captinv.perfusion.covariance"
# What a file torch.load can read starts with: a zip archive (torch.save) or a pickle (protocol 2+).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


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

    def to_bytes(self) -> bytes:
        """The safetensors file: float32 rows, metadata in a fixed order (identical runs, identical files)."""
        tensors = {key: value.detach().to("cpu", torch.float32) for key, value in self.vectors.items()}
        return files.safetensors_bytes(tensors, self.metadata)


def _layout_keys(keys: list[str], path: Path) -> list[str]:
    """The keys holding the vectors, or a refusal that says what the file is instead."""
    if set(keys) >= SDXL_KEYS:
        return ["clip_l", "clip_g"]
    if len(keys) == 1:  # emb_params, or diffusers' {token: tensor}
        return keys
    raise FileFormatError(f"{path.name} is not an embedding: found keys {sorted(keys)[:6]}.")


def _check_safetensors(path: Path):
    def check(keys: list[str], metadata: dict[str, str]) -> None:
        if metadata.get("format") == PERFUSION_FORMAT:
            raise FileFormatError(
                f"{path.name} is a Perfusion concept, not an embedding; use it as a concept "
                "(generate --concept, or its <perfusion:...> tag)."
            )
        if metadata.get("format") == COVARIANCE_FORMAT:
            raise FileFormatError(
                f"{path.name} is Perfusion's cached text-encoding covariance, not an embedding."
            )
        _layout_keys(keys, path)

    return check


def _vectors(data: dict, path: Path) -> Vectors:
    if "string_to_param" in data:  # the WebUI's .pt layout
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise FileFormatError(f"{path.name} holds {len(params)} terms; an embedding file must hold one.")
        data = {"emb_params": next(iter(params.values()))}
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    keys = _layout_keys(list(tensors), path)
    vectors = {}
    for key in keys:
        value = tensors[key]
        if not value.is_floating_point() or value.dim() not in (1, 2) or value.numel() == 0:
            raise FileFormatError(
                f"{path.name}: '{key}' has shape {list(value.shape)} ({value.dtype}); an embedding holds "
                "rows of floating-point numbers."
            )
        vectors["emb_params" if len(keys) == 1 else key] = (
            value if value.dim() == 2 else value[None]
        ).float()
    return vectors


def read_embedding(path: Path) -> EmbeddingFile:
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        data, metadata = files.read_safetensors(path, check=_check_safetensors(path))
    else:
        if not path.is_file():
            raise FileFormatError(f"No such file: {path}" if not path.exists() else f"{path} is a folder.")
        with path.open("rb") as file:
            if not file.read(4).startswith(_TORCH_MAGIC):
                raise FileFormatError(
                    f"{path.name} is not an embedding file; give a .safetensors, .pt or .bin embedding."
                )
        try:
            with warnings.catch_warnings():  # torch's notes on pickle protocols: noise before a refusal
                warnings.simplefilter("ignore", UserWarning)
                data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for foreign or damaged pickles
            raise FileFormatError(f"{path.name} could not be read safely: {err}".splitlines()[0]) from err
        if not isinstance(data, dict):
            raise FileFormatError(f"{path.name} is not an embedding (it holds a {type(data).__name__}).")
        metadata = {k: str(v) for k, v in data.items() if k in ("name", "step", "sd_checkpoint_name")}
    return EmbeddingFile(path, _vectors(data, path), metadata)


def check_layout(vectors: Vectors, widths: dict[str, int], name: str = "the embedding") -> None:
    """The WebUI's loading rules: one tensor, or exactly clip_l + clip_g; widths match the model."""
    if set(vectors) != set(widths):
        raise CaptinvError(
            f"{name} has keys {sorted(vectors)} but this model needs {sorted(widths)}: it was made for "
            "another model family."
        )
    for key, value in vectors.items():
        if value.dim() != 2 or value.shape[1] != widths[key]:
            raise CaptinvError(
                f"{name}: '{key}' has shape {list(value.shape)} but this model needs [n, {widths[key]}]: it "
                "was made for another model family."
            )
