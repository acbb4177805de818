"""Reading the user's photo(s) and turning them into model-ready pixels.

Phone photos carry their rotation in EXIF; PIL ignores it, and training on a
sideways cat teaches a sideways cat, so every image is transposed first.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captinv.errors import ImageError

if TYPE_CHECKING:  # torch is imported where pixels are made, so refusing a bad file stays quick
    import torch

MIN_SIDE = 64
MAX_PIXELS = 150_000_000  # above every phone camera; a larger file is more likely a mistake or a bomb
ImageSource = str | Path | bytes | Image.Image | np.ndarray


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return Image.fromarray(source)
    if isinstance(source, bytes):
        return Image.open(io.BytesIO(source))
    path = Path(source)
    if path.is_dir():
        raise ImageError(f"{path} is a folder; give image files.")
    if not path.is_file():
        raise ImageError(f"Image file not found: {path}")
    return Image.open(path)


def load_image(source: ImageSource) -> Image.Image:
    """An upright RGB PIL image from a path, encoded bytes, an array or a PIL image."""
    if source is None:
        raise ImageError("No image given: drop a photo on the image box (or pass a file).")
    label = Path(source).name if isinstance(source, (str, Path)) else "The image"
    too_large = f"captinv reads images up to {MAX_PIXELS / 1e6:.0f} megapixels. Downscale it first."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS decides
            image = _open(source)
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"{label} is {image.width}x{image.height}; {too_large}")
            image.load()
    except Image.DecompressionBombError as err:  # Pillow refuses before the size is ours to read
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = (
            f"{int(found[1]) / 1e6:.0f}" if found else f"over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f}"
        )
        raise ImageError(f"{label} has {size} megapixels; {too_large}") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{label} is not an image file. Use a PNG, JPEG or WebP file.") from err
    except (OSError, TypeError, ValueError) as err:
        raise ImageError(f"Could not read {label} ({err}). Use a PNG, JPEG or WebP file.") from err
    image = ImageOps.exif_transpose(image).convert("RGB")
    if min(image.size) < MIN_SIDE:
        raise ImageError(
            f"{label} is {image.width}x{image.height}; it needs at least {MIN_SIDE} px per side."
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
    import torch

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
    import torch

    crop = image.crop(box).resize((resolution, resolution), Image.Resampling.BICUBIC)
    if flip:
        crop = ImageOps.mirror(crop)
    array = np.asarray(crop, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
