"""A procedural world of captioned images, small enough to train a text-to-image model on a CPU.

Every image is one flat-coloured shape on black, described by a caption whose every word is
visible in the pixels ("a big red circle on the left"). Some colour + shape pairs never appear in
training, so an inversion benchmark can teach the model a concept it has only seen in parts.
Because the world is procedural, `detect` can read the concept back out of any image, generated
or rendered, which turns "the model follows the text" into a number.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from skimage.measure import label

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 145, 30),
    "yellow": (235, 225, 40),
    "green": (40, 190, 60),
    "cyan": (40, 210, 220),
    "blue": (40, 80, 235),
    "purple": (150, 60, 210),
    "white": (240, 240, 240),
}

# Outlines on a unit radius around the shape's centre (y grows downwards); the circle is special-cased.
_POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "square": ((-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)),
    "triangle": ((0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)),
    "diamond": ((0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)),
}
SHAPES = ("circle", *_POLYGONS)

SIZES: dict[str, float] = {"small": 0.14, "big": 0.24}  # radius as a fraction of the image side
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.3, 0.5),
    "right": (0.7, 0.5),
    "top": (0.5, 0.3),
    "bottom": (0.5, 0.7),
    "centre": (0.5, 0.5),
}
_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}

# Never seen in training: every colour and every shape is, but not these together.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("purple", "triangle"),
    ("yellow", "circle"),
    ("green", "square"),
    ("orange", "diamond"),
)

_JITTER = 0.03  # centre offset, fraction of the side: positions are regions, not pixels
_SCALE_JITTER = 0.08
_SUPERSAMPLE = 8
_FOREGROUND = 60  # max-channel level that separates a shape from the black background


@dataclass(frozen=True)
class Scene:
    """One shape; the jitter fields move and scale it within its named position and size."""

    colour: str
    shape: str
    size: str
    position: str
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    def caption(self) -> str:
        where = _PHRASES.get(self.position, "in the centre")
        return f"a {self.size} {self.colour} {self.shape} {where}"

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT

    def render(self, size: int) -> Image.Image:
        """RGB image, antialiased by drawing at a higher resolution and box-filtering down."""
        side = size * _SUPERSAMPLE
        px, py = POSITIONS[self.position]
        coverage = shape_mask(
            self.shape,
            ((px + self.dx) * side, (py + self.dy) * side),
            SIZES[self.size] * self.scale * side,
            side,
        )
        canvas = Image.new("RGB", (side, side), (0, 0, 0))
        canvas.paste(COLOURS[self.colour], mask=coverage)
        return canvas.resize((size, size), Image.Resampling.BOX)


def shape_mask(shape: str, centre: tuple[float, float], radius: float, side: int) -> Image.Image:
    """An 'L' image of `side` pixels with the shape drawn at 255."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = centre
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
    else:
        draw.polygon([(cx + x * radius, cy + y * radius) for x, y in _POLYGONS[shape]], fill=255)
    return mask


def _unit_moments(shape: str) -> tuple[float, float]:
    """Area and vertical centroid offset of the shape at radius 1: what `detect` inverts."""
    if shape == "circle":
        return float(np.pi), 0.0
    points = np.array(_POLYGONS[shape])
    x, y = points[:, 0], points[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    return float(abs(area)), float(((y + yn) * cross).sum() / (6 * area))


_MOMENTS = {shape: _unit_moments(shape) for shape in SHAPES}


def sample_scene(rng: random.Random, split: str = "train") -> Scene:
    """A random scene from `split`: 'train' avoids HELD_OUT pairs, 'heldout' uses only them."""
    if split == "heldout":
        colour, shape = rng.choice(HELD_OUT)
    elif split == "train":
        colour, shape = rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT])
    else:
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    return Scene(
        colour,
        shape,
        rng.choice(list(SIZES)),
        rng.choice(list(POSITIONS)),
        dx=rng.uniform(-_JITTER, _JITTER),
        dy=rng.uniform(-_JITTER, _JITTER),
        scale=rng.uniform(1 - _SCALE_JITTER, 1 + _SCALE_JITTER),
    )


def sample_scenes(seed: int, count: int, split: str = "train") -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng, split) for _ in range(count)]


def _main_object(pixels: np.ndarray) -> np.ndarray | None:
    """Mask of the largest bright blob, thresholded at half its own brightness.

    The second threshold makes the mask follow the 50 % coverage line whatever the colour, so a
    dark blue shape and a white one of the same outline give the same area.
    """
    brightness = pixels.max(axis=2)
    blobs = label(brightness > _FOREGROUND)
    if blobs.max() == 0:
        return None
    largest = np.bincount(blobs.ravel())[1:].argmax() + 1
    level = np.median(brightness[blobs == largest]) / 2
    blobs = label(brightness > level)
    largest = np.bincount(blobs.ravel())[1:].argmax() + 1
    return blobs == largest


def detect(image: Image.Image) -> dict[str, str]:
    """Colour, shape, size and position of the main object, read from pixels alone.

    Colour: the palette entry nearest the blob's median pixel. Shape: for each candidate, the
    outline whose area and centroid match the blob's (its zeroth and first moments) is drawn and
    the one overlapping the blob best wins. Position and size follow from that fitted outline.
    Returns an empty dict for an image with no object.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    mask = _main_object(pixels)
    if mask is None:
        return {}
    side = pixels.shape[0]
    median = np.median(pixels[mask], axis=0)
    colour = min(COLOURS, key=lambda name: float(((np.array(COLOURS[name]) - median) ** 2).sum()))
    ys, xs = np.nonzero(mask)
    area, cx, cy = float(mask.sum()), float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
    best: tuple[float, str, float, float] = (-1.0, "", 0.0, 0.0)
    for shape, (unit_area, offset) in _MOMENTS.items():
        radius = (area / unit_area) ** 0.5
        centre_y = cy - offset * radius
        template = shape_mask(
            shape, (cx * _SUPERSAMPLE, centre_y * _SUPERSAMPLE), radius * _SUPERSAMPLE, side * _SUPERSAMPLE
        )
        fitted = np.asarray(template.resize((side, side), Image.Resampling.BOX)) >= 128
        iou = float((fitted & mask).sum() / max((fitted | mask).sum(), 1))
        if iou > best[0]:
            best = (iou, shape, radius, centre_y)
    _, shape, radius, centre_y = best
    position = min(
        POSITIONS,
        key=lambda name: (POSITIONS[name][0] * side - cx) ** 2 + (POSITIONS[name][1] * side - centre_y) ** 2,
    )
    size = min(SIZES, key=lambda name: abs(SIZES[name] * side - radius))
    return {"colour": colour, "shape": shape, "size": size, "position": position}
