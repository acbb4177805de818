"""Extra Networks card files beside a run's outputs: `<name>.preview.png` and
`<name>.description.txt`, the names the WebUI's card pages look for."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def _write_atomically(path: Path, content: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(content)
    temp.replace(path)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_cards(folder: Path, pictures: dict[str, Image.Image], description: str) -> None:
    """A preview and a description per name."""
    for name, image in pictures.items():
        _write_atomically(folder / f"{name}.preview.png", _png(image))
        _write_atomically(folder / f"{name}.description.txt", f"{description}\n".encode())
