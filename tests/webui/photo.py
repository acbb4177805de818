"""The real photo every WebUI test sends (scikit-image's chelsea, a tabby cat)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image
from skimage import data


def chelsea() -> Image.Image:
    return Image.fromarray(np.asarray(data.chelsea()))


def chelsea_b64() -> str:
    buffer = io.BytesIO()
    chelsea().save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
