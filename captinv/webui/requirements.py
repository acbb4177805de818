"""What `install.py` may install: only what is missing, never a different version of what is there.

Installing a missing package can still drag a dependency to another version;
`pin_installed` writes a pip constraints file that freezes every installed
distribution at its current version, so the WebUI's pins (torch,
transformers, gradio, safetensors ...) cannot move.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def runtime_requirements(pyproject: Path) -> list[str]:
    """`[project] dependencies` of pyproject.toml, read without tomllib (the WebUI runs Python 3.10)."""
    text = pyproject.read_text(encoding="utf-8")
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    return re.findall(r"\"([^\"]+)\"", block.group(1)) if block else []


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1)


def missing(requirements: Iterable[str], is_installed: Callable[[str], bool]) -> list[str]:
    return [req for req in requirements if not is_installed(requirement_name(req))]


def pin_installed(path: Path) -> Path:
    """A constraints file holding every installed distribution at its installed version."""
    pins = sorted(
        {
            f"{dist.metadata['Name']}=={dist.version}"
            for dist in metadata.distributions()
            if dist.metadata["Name"]
        }
    )
    path.write_text("\n".join(pins) + "\n", encoding="utf-8")
    return path
