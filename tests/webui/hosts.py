"""The WebUIs the host tier runs against, and what differs between them for a test: where the
checkout comes from, the command-line flags of an offline CPU start, and how a tiny checkpoint
of each model family is made for it.

Each host is set up by hand outside this repository and named by an environment variable; a host
whose variable is unset is skipped with that reason. The tests themselves are the same for every
host.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class HostKind:
    name: str  # "a1111", "forge", "reforge": what tests and ids call it
    env: str  # the variable that points at a checkout with its venv/ and repositories/
    families: tuple[str, ...]
    flags: tuple[str, ...]  # an offline CPU start in full precision
    checkpoint_script: str  # run with the host's own Python: --webui DIR --family F --out PATH
    widths: dict[str, int]  # the embedding "shape" the host reports per family
    cache_checkpoints: bool = False  # full-width checkpoints take minutes: keep them between runs

    def checkout(self) -> Path | None:
        """The checkout named by this host's variable, or None (the host's tests are skipped)."""
        value = os.environ.get(self.env)
        return Path(value) if value else None

    def python(self, checkout: Path) -> str:
        override = os.environ.get(f"{self.env.removesuffix('_DIR')}_PYTHON")
        return override or str(checkout / "venv" / "bin" / "python")

    def launch_flags(self, checkout: Path) -> list[str]:
        if self.name == "forge":  # gradio 4 serves Forge's own scripts only from allowed paths
            return [*self.flags, "--gradio-allowed-path", str(checkout)]
        return list(self.flags)

    def checkpoint(
        self, checkout: Path, family: str, folder: Path, env: dict[str, str], full: bool = False
    ) -> Path:
        """A random-weight checkpoint of `family` this host loads (built, or taken from the cache)."""
        script = HERE / self.checkpoint_script
        out = folder / f"{'full' if full else 'tiny'}-{family}"
        if self.cache_checkpoints:
            key = hashlib.sha256(script.read_bytes() + f"{checkout.resolve()}:{family}".encode()).hexdigest()
            cache = Path(os.environ.get("CAPTINV_TEST_CACHE", Path.home() / ".cache" / "captinv-tests"))
            out = cache / f"{self.name}-{family}-{key[:12]}"
            if out.with_suffix(".safetensors").is_file():
                return out.with_suffix(".safetensors")
        command = [self.python(checkout), str(script), "--webui", str(checkout), "--family", family]
        command += ["--out", str(out)] + (["--full"] if full else [])
        subprocess.run(command, cwd=checkout, env=env, check=True, capture_output=True)
        return out.with_suffix(".safetensors")


OFFLINE = (
    "--skip-prepare-environment",
    "--skip-install",
    "--skip-torch-cuda-test",
    "--skip-version-check",
    "--no-download-sd-model",
)
# Forge's memory manager ignores --use-cpu/--no-half; text encoders default to fp16 even on a CPU.
FORGE_CPU = ("--always-cpu", "--all-in-fp32", "--clip-in-fp32", "--vae-in-fp32")

A1111 = HostKind(
    "a1111",
    "CAPTINV_WEBUI_DIR",
    ("sd1", "sdxl", "sd2v"),
    (*OFFLINE, "--use-cpu", "all", "--no-half", "--precision", "full"),
    "make_tiny_checkpoint.py",
    {"sd1": 768, "sd2v": 1024, "sdxl": 768 + 1280},
)
FORGE = HostKind(
    "forge",
    "CAPTINV_FORGE_DIR",
    ("sd1", "sdxl"),
    (*OFFLINE, *FORGE_CPU),
    "make_forge_checkpoint.py",
    {"sd1": 768, "sdxl": 768 + 1280},
    cache_checkpoints=True,
)
REFORGE = HostKind(
    "reforge",
    "CAPTINV_REFORGE_DIR",
    ("sd1", "sdxl"),
    (*OFFLINE, *FORGE_CPU),
    "make_forge_checkpoint.py",
    {"sd1": 768, "sdxl": 768 + 1280},
    cache_checkpoints=True,
)
HOSTS = (A1111, FORGE, REFORGE)
