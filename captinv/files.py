"""The one way captinv writes and reads its files.

Writing: a run's outputs form a *set* (per-word embeddings, the combined one,
card files; or a Perfusion concept and its cards) that must appear whole or not
at all, even when the process is killed half-way. `write_set` stages every file
in a hidden folder beside the targets (same file system, so a rename is atomic),
records the list of moves in `moves.json` and only then moves the files in,
keeping any file it replaces as a backup. Removing `moves.json` is the commit
point. A staging folder left by a killed run is rolled back by the next writer
(or `recover`): files already moved in go back, replaced files are restored, so
a killed run leaves the folder as it was and never blocks a name. A single file
is a set of one. Files get the user's usual permissions (umask), not
`mkstemp`'s 0600.

Reading: `read_safetensors` is the one safetensors reader; it turns every way a
file can be wrong into a `FileFormatError` that names the file.

On POSIX, writers of one folder are serialised by a lock on the folder itself,
so a live run's staging folder is never mistaken for a leftover. Windows has no
directory locks; there the WebUI's queue serialises its own jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captinv.errors import FileFormatError, NameTakenError, OutputError, option

if TYPE_CHECKING:
    import torch

STAGING_PREFIX = ".captinv-staging-"
_MOVES = "moves.json"
_STAGED = ".staged"
_BACKUP = ".old"
_PROBE_BYTES = 4096


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file's bytes (tensors as given, moved to the CPU) with a canonical header.

    safetensors keeps metadata in a hash map whose order changes from process to process;
    re-serialising the header with sorted keys makes identical runs give identical files.
    """
    from safetensors.torch import save

    raw = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=dict(metadata))
    length = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + length]), sort_keys=True, separators=(",", ":"))
    encoded = header.encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned, as safetensors does
    return len(encoded).to_bytes(8, "little") + encoded + raw[8 + length :]


def read_safetensors(
    path: Path, *, check: Callable[[list[str], dict[str, str]], None] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the string metadata of a safetensors file.

    `check(keys, metadata)` runs before any tensor is loaded and may refuse the file, so a
    multi-gigabyte checkpoint given by mistake is refused without being read.
    """
    with open_safetensors(path) as handle:
        keys, metadata = list(handle.keys()), dict(handle.metadata() or {})
        if check is not None:
            check(keys, metadata)
        return {key: handle.get_tensor(key) for key in keys}, metadata


def read_metadata(path: Path) -> dict[str, str]:
    """Only the string metadata of a safetensors file (its header), e.g. to tell kinds of file apart."""
    with open_safetensors(path) as handle:
        return dict(handle.metadata() or {})


@contextlib.contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """A safetensors file opened lazily (keys, shapes, metadata without reading weights)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"No such file: {path}")
    if path.is_dir():
        raise FileFormatError(f"{path} is a folder; give a .safetensors file.")
    try:
        with safe_open(str(path), "pt") as handle:
            yield handle
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise FileFormatError(f"{path.name} is not a readable safetensors file ({err}).") from err


def check_folder(folder: Path) -> None:
    """Refuse a folder that cannot be created or written, before any work; create nothing.

    The probe writes a nameless temporary file in the folder (or its nearest existing
    parent), which also catches a read-only or full file system.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "it" if existing == folder else f"{existing}"
        raise OutputError(f"Cannot write to {folder}: {where} is a file, not a folder. Give a folder.")
    try:
        with tempfile.TemporaryFile(dir=existing) as probe:
            probe.write(b"\0" * _PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise OutputError(
            f"Cannot write to {folder} ({err.strerror or err}). Give a writable folder."
        ) from err


def write_file(path: Path, data: bytes, *, overwrite: bool) -> Path:
    """One file, written all-or-nothing (a set of one)."""
    path = Path(path)
    return write_set(path.parent, {path.name: data}, overwrite=overwrite)[0]


def write_set(
    folder: Path, files: Mapping[str, bytes], *, overwrite: bool, replaceable: Collection[str] = ()
) -> list[Path]:
    """Write `files` (file name -> bytes) into `folder`: all of them, or none.

    An existing file is replaced only with `overwrite` or when its name is `replaceable`;
    otherwise the set is refused before anything is written.
    """
    folder = Path(folder)
    for name in files:
        if Path(name).name != name or name.startswith(".") or not name:
            raise ValueError(f"{name!r} is not a plain, visible file name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _folder_lock(folder):
            _recover(folder)
            taken = sorted(
                name for name in files if name not in replaceable and os.path.lexists(folder / name)
            )
            if taken and not overwrite:
                raise NameTakenError(
                    f"{', '.join(taken)} already exist{'s' if len(taken) == 1 else ''} in {folder}; choose "
                    f"another name or pass {option('overwrite')} to replace "
                    f"{'it' if len(taken) == 1 else 'them'}."
                )
            staging = folder / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
            staging.mkdir()
            try:
                for name, data in files.items():
                    _write_new(staging / f"{name}{_STAGED}", data)
                _commit(folder, staging, list(files))
            finally:
                _discard(folder, staging)  # after the commit point this only deletes the staging folder
    except OSError as err:
        raise OutputError(
            f"Could not write to {folder} ({err.strerror or err}); nothing was written."
        ) from err
    return [folder / name for name in files]


def recover(folder: Path) -> None:
    """Roll back what killed runs left in `folder`; touches nothing when there is nothing to do."""
    folder = Path(folder)
    if folder.is_dir() and any(_leftovers(folder)):
        with _folder_lock(folder):
            _recover(folder)


def is_staging(path: Path) -> bool:
    """Whether `path` lies inside a staging folder (files there are not outputs yet)."""
    return any(part.startswith(STAGING_PREFIX) for part in Path(path).parts)


def _leftovers(folder: Path) -> Iterator[Path]:
    return (path for path in folder.glob(f"{STAGING_PREFIX}*") if path.is_dir())


def _recover(folder: Path) -> None:
    for staging in list(_leftovers(folder)):
        _discard(folder, staging)


def _write_new(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:  # mode 0666 & ~umask
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _commit(folder: Path, staging: Path, names: list[str]) -> None:
    """Move the staged files in, keeping replaced files as backups until the commit point."""
    manifest = staging / _MOVES
    _write_new(staging / f"{_MOVES}.tmp", json.dumps(names).encode())
    os.replace(staging / f"{_MOVES}.tmp", manifest)
    for name in names:
        target = folder / name
        if os.path.lexists(target):
            os.replace(target, staging / f"{name}{_BACKUP}")
        os.replace(staging / f"{name}{_STAGED}", target)
    _sync(folder)
    os.remove(manifest)  # the commit point: from here on the set stays


def _discard(folder: Path, staging: Path) -> None:
    """Undo the moves `moves.json` lists, then delete the staging folder. Without `moves.json`
    nothing was moved yet, or the set was committed. Undoing is idempotent: a file goes back
    into staging before its backup is restored, so a killed roll-back is simply redone."""
    manifest = staging / _MOVES
    if manifest.exists():
        for name in json.loads(manifest.read_text(encoding="utf-8")):
            target, staged, backup = folder / name, staging / f"{name}{_STAGED}", staging / f"{name}{_BACKUP}"
            if not staged.exists() and os.path.lexists(target):
                os.replace(target, staged)  # ours: take it back out
            if backup.exists():
                os.replace(backup, target)
        _sync(folder)
        os.remove(manifest)
    shutil.rmtree(staging, ignore_errors=True)


def _sync(folder: Path) -> None:
    """Make renames in `folder` durable where the platform allows (POSIX)."""
    with contextlib.suppress(OSError, AttributeError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)
