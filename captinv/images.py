"""Reading the user's photo(s) and turning them into model-ready pixels.

Phone photos carry their rotation in EXIF; PIL ignores it, and training on a
sideways cat teaches a sideways cat, so every image is transposed first.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from captinv.errors import ImageError

MIN_SIDE = 64
ImageSource = str | Path | bytes | Image.Image | np.ndarray


def load_image(source: ImageSource) -> Image.Image:
    """An upright RGB PIL image from a path, encoded bytes, an array or a PIL image."""
    if source is None:
        raise ImageError("No image given: drop a photo on the image box (or pass a file).")
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, np.ndarray):
            image = Image.fromarray(source)
        elif isinstance(source, bytes):
            image = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"Image file not found: {path}")
            image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, TypeError, ValueError) as err:
        raise ImageError(f"Could not read the image ({err}). Use a PNG, JPEG or WebP file.") from err
    image = ImageOps.exif_transpose(image).convert("RGB")
    if min(image.size) < MIN_SIDE:
        raise ImageError(
            f"The image is {image.width}x{image.height}; it needs at least {MIN_SIDE} px per side."
        )
    return image


def load_images(sources: list[ImageSource]) -> list[Image.Image]:
    if not sources:
        raise ImageError("No image given: drop a photo on the image box (or pass a file).")
    return [load_image(source) for source in sources]


def square_crops(
    image: Image.Image, count: int, generator: torch.Generator, min_scale: float = 0.7
) -> list[tuple[int, int, int, int]]:
    """The centre square plus `count` random squares of 70-100% of the short side."""
    width, height = image.size
    short = min(width, height)
    boxes = [((width - short) // 2, (height - short) // 2)]
    sides = [short]
    for _ in range(count):
        side = int(short * (min_scale + (1 - min_scale) * torch.rand((), generator=generator).item()))
        left = int(torch.randint(0, width - side + 1, (), generator=generator))
        top = int(torch.randint(0, height - side + 1, (), generator=generator))
        boxes.append((left, top))
        sides.append(side)
    return [(left, top, left + side, top + side) for (left, top), side in zip(boxes, sides)]


def to_pixels(
    image: Image.Image, box: tuple[int, int, int, int], resolution: int, flip: bool
) -> torch.Tensor:
    """A [3, R, R] tensor in [-1, 1], the range the Stable Diffusion VAEs expect."""
    crop = image.crop(box).resize((resolution, resolution), Image.Resampling.BICUBIC)
    if flip:
        crop = ImageOps.mirror(crop)
    array = np.asarray(crop, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
