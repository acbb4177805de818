"""The real photo every WebUI test sends (scikit-image's chelsea, a tabby cat)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image
from skimage import data


def chelsea() -> Image.Image:
    return Image.fromarray(np.asarray(data.chelsea()))


def chelsea_b64(*, flip: bool = False, crop: bool = False) -> str:
    """The photo as the API takes it; mirrored or cropped for a second or third view."""
    image = chelsea()
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if crop:
        image = image.crop((image.width // 8, 0, image.width, image.height * 7 // 8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
