"""Safetensors files written all-or-nothing.

A file is first written beside its target and then renamed over it, so a crash
or a full disk never leaves a half-written concept that the WebUI would try to
load, and an existing file is only replaced when the caller says so.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from captinv.errors import NameTakenError


def write_atomic(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, overwrite: bool
) -> Path:
    """Write `tensors` (moved to CPU, made contiguous) with string `metadata` to `path`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise NameTakenError(f"{path.name} already exists; choose another name or allow overwriting.")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, temp, metadata=metadata)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
    return path


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on CPU) and the string metadata of a safetensors file."""
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
