"""The one writer and reader: sets appear whole or not at all, even across a killed process."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from captinv import files
from captinv.errors import FileFormatError, NameTakenError, OutputError, cli_flag

ROOT = Path(__file__).resolve().parent.parent
SET = {"a.safetensors": b"A" * 100, "b.safetensors": b"B" * 100, "a.preview.png": b"P" * 10}


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_set_is_written_whole_with_the_users_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        paths = files.write_set(tmp_path / "new" / "folder", SET, overwrite=False)
    finally:
        os.umask(old)
    assert [p.name for p in paths] == list(SET)
    assert _listing(tmp_path / "new" / "folder") == SET  # no staging folder, no temp files left
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {0o640}  # umask, not mkstemp's 0600


def test_existing_files_are_kept_unless_overwriting_or_replaceable(tmp_path):
    files.write_set(tmp_path, SET, overwrite=False)
    new = {name: data.lower() for name, data in SET.items()}
    with pytest.raises(NameTakenError) as caught:
        files.write_set(tmp_path, new, overwrite=False)
    assert caught.value.render(cli_flag).endswith("or pass --overwrite to replace them.")
    assert _listing(tmp_path) == SET
    with pytest.raises(NameTakenError, match="a.safetensors already exists"):
        files.write_set(tmp_path, new, overwrite=False, replaceable=["b.safetensors", "a.preview.png"])
    files.write_set(tmp_path, {"a.preview.png": b"new card"}, overwrite=False, replaceable=["a.preview.png"])
    files.write_set(tmp_path, new, overwrite=True)
    assert _listing(tmp_path) == new


def test_a_full_disk_while_staging_writes_nothing(tmp_path, monkeypatch):
    files.write_set(tmp_path, {"old.safetensors": b"old"}, overwrite=False)
    before = _listing(tmp_path)
    real = files._write_new
    calls = []

    def full(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(files, "_write_new", full)
    with pytest.raises(OutputError, match="No space left on device.*nothing was written"):
        files.write_set(tmp_path, SET, overwrite=False)
    assert _listing(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["old.safetensors"]


def test_a_failure_between_moves_puts_everything_back(tmp_path, monkeypatch):
    files.write_set(tmp_path, SET, overwrite=False)
    before = _listing(tmp_path)
    real, moves = os.replace, []

    def failing(source, target):
        if Path(target).parent == tmp_path:
            moves.append(target)
            if len(moves) == 4:  # two replaced files and a new one are in place by now
                raise OSError(errno.EIO, "I/O error")
        real(source, target)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OutputError, match="I/O error"):
        files.write_set(tmp_path, {name: b"new" for name in ["new.txt", *SET]}, overwrite=True)
    assert _listing(tmp_path) == before


def test_check_folder_creates_nothing_and_refuses_files_in_the_way(tmp_path):
    files.check_folder(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="it is a file, not a folder"):
        files.check_folder(tmp_path / "file")
    with pytest.raises(OutputError, match="file is a file, not a folder"):
        files.check_folder(tmp_path / "file" / "below")


def test_identical_content_gives_identical_bytes():
    """safetensors orders metadata by a per-process hash; the canonical header does not."""
    tensors = {"emb_params": torch.ones(2, 3)}
    metadata = {f"key{i}": str(i) for i in range(20)}
    raw = {save(tensors, metadata=metadata) for _ in range(5)}
    ours = {files.safetensors_bytes(tensors, metadata) for _ in range(5)}
    assert len(ours) == 1 and len(raw) > 1


def test_canonical_files_read_back_in_safetensors(tmp_path):
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(5, dtype=torch.float64)}
    path = files.write_file(
        tmp_path / "x.safetensors", files.safetensors_bytes(tensors, {"k": "ü"}), overwrite=False
    )
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"k": "ü"}
        assert all(torch.equal(handle.get_tensor(k), v) for k, v in tensors.items())
    assert files.read_safetensors(path)[1] == {"k": "ü"}


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "No such file"), (b"", "header too small"), (b"\xff" * 64, "is not a readable safetensors file")],
)
def test_the_reader_names_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "x.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FileFormatError, match=message):
        files.read_safetensors(path)


_KILL_AT_MOVE = """
import os, signal, sys
from pathlib import Path

target, count, moves = Path(sys.argv[1]).resolve(), int(sys.argv[2]), []
real = os.replace

def replace(source, destination):  # SIGKILL ourselves between two moves into `target`
    if Path(destination).resolve().parent == target:
        moves.append(destination)
        if len(moves) > count:
            os.kill(os.getpid(), signal.SIGKILL)
    real(source, destination)

os.replace = replace
"""


def _killed(snippet: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    code = _KILL_AT_MOVE + textwrap.dedent(snippet)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)


def test_a_set_killed_while_it_commits_is_rolled_back_to_the_old_files(tmp_path):
    files.write_set(tmp_path, SET, overwrite=False)
    before = _listing(tmp_path)
    done = _killed(
        """
        from captinv import files
        files.write_set(target, {name: b"new" for name in ["a.safetensors", "b.safetensors", "c.txt"]}, overwrite=True)
        """,
        str(tmp_path),
        "2",
    )
    assert done.returncode == -9, done.stderr
    assert (tmp_path / "b.safetensors").read_bytes() == b"new"  # killed with the set half moved in
    assert any(p.name.startswith(files.STAGING_PREFIX) for p in tmp_path.iterdir())
    files.recover(tmp_path)
    assert _listing(tmp_path) == before


def test_an_inversion_killed_between_file_moves_is_rerun_under_the_same_name(tmp_path):
    """The issue's case: before, the next run found half a set and refused the name."""
    image = ROOT / "examples" / "miniworld-green-square.png"
    argv = [
        "invert",
        str(image),
        "--model",
        "miniworld",
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--out",
        str(tmp_path),
    ]
    killed = _killed("from captinv.__main__ import main\nmain(sys.argv[3:])", str(tmp_path), "3", *argv)
    assert killed.returncode == -9, killed.stderr
    moved_in = [p.name for p in tmp_path.glob("*.safetensors")]
    assert len(moved_in) == 3  # part of the set was there when the process died
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    again = subprocess.run([sys.executable, "-m", "captinv", *argv], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    words = image.with_suffix(".txt").read_text().split()
    stem = "miniworld-green-square"
    assert written == sorted(
        [f"{stem}-all.safetensors", *(f"{stem}-w{i:02d}-{w}.safetensors" for i, w in enumerate(words, 1))]
    )
    for path in tmp_path.iterdir():
        with safe_open(str(path), "pt") as handle:
            assert handle.metadata()["sentence"].startswith(f"{stem}-w01-a ")
