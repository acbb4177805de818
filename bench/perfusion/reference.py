"""The covariance corpus captinv generated before issue #15 (60 subjects, 30 adjectives, 30 places,
25 styles, 12 sentence shapes; ~200 words), kept as the benchmarks' reference point."""

from __future__ import annotations

import random

_SUBJECTS = (
    "cat", "dog", "woman", "man", "child", "old man", "teddy bear", "car", "house", "castle", "mountain",
    "forest", "robot", "dragon", "bird", "horse", "flower", "tree", "city street", "beach", "lake",
    "bowl of fruit", "cup of coffee", "guitar", "bicycle", "ship", "airplane", "train", "cake", "sneaker",
    "backpack", "vase", "lamp", "chair", "knight", "astronaut", "wizard", "fox", "owl", "lion", "elephant",
    "butterfly", "sunflower", "bridge", "lighthouse", "cabin", "waterfall", "skyscraper", "girl", "teapot",
    "clock", "book", "sculpture", "toy", "shoe", "hat", "dress", "pizza", "motorcycle", "rabbit",
)  # fmt: skip
_ADJECTIVES = (
    "red", "blue", "small", "large", "old", "shiny", "wooden", "golden", "fluffy", "tiny", "giant", "vintage",
    "modern", "colorful", "dark", "bright", "rusty", "glowing", "cute", "ancient", "futuristic", "white",
    "black", "green", "broken", "happy", "sleepy", "wet", "furry", "metal",
)  # fmt: skip
_PLACES = (
    "on a table", "in a forest", "on the beach", "in the snow", "in a city", "in space", "under water",
    "on a mountain", "in a garden", "in a kitchen", "at night", "at sunset", "in the rain",
    "in a field of flowers", "next to a river", "in a library", "on a street", "in the desert", "in a cafe",
    "on a boat", "in a studio", "on the moon", "in a living room", "by the window", "in a park",
    "on a rooftop", "in a cave", "at the market", "in a museum", "on the grass",
)  # fmt: skip
_STYLES = (
    "photograph", "oil painting", "watercolor", "digital art", "pencil sketch", "3d render", "anime style",
    "studio lighting", "highly detailed", "cinematic lighting", "35mm film", "bokeh", "8k", "concept art",
    "pixel art", "low poly", "black and white photo", "macro photo", "wide angle", "trending on artstation",
    "soft light", "dramatic shadows", "pastel colors", "vivid colors", "sharp focus",
)  # fmt: skip
_TEMPLATES = (
    "a photo of a {adj} {subject} {place}",
    "{adj} {subject} {place}, {style}",
    "a {style} of a {subject} {place}",
    "{subject}, {adj}, {style}, {style2}",
    "the {adj} {subject}",
    "close-up of the {subject} {place}",
    "a {subject} and a {subject2} {place}, {style}",
    "a painting of a {adj} {subject} and a {adj2} {subject2} {place}, {style}, {style2}",
    "{subject}",
    "a {subject} {place} with a {adj} {subject2}",
    "portrait of a {adj} {subject}, {style}, {style2}, {style3}",
    "a {adj} {subject} {place}, {adj2} {subject2} in the background, {style}, {style2}, {style3}",
)


def old_corpus(size: int = 20_000, seed: int = 0) -> list[str]:
    """`size` distinct prompts of varied length and wording, the same for the same seed."""
    draw = random.Random(seed)
    prompts: dict[str, None] = {}
    for _ in range(size * 20):
        if len(prompts) == size:
            return list(prompts)
        words = {
            "subject": draw.choice(_SUBJECTS), "subject2": draw.choice(_SUBJECTS),
            "adj": draw.choice(_ADJECTIVES), "adj2": draw.choice(_ADJECTIVES), "place": draw.choice(_PLACES),
            "style": draw.choice(_STYLES), "style2": draw.choice(_STYLES), "style3": draw.choice(_STYLES),
        }  # fmt: skip
        prompts.setdefault(draw.choice(_TEMPLATES).format(**words), None)
    raise ValueError(
        f"Could not generate {size} distinct prompts; use a smaller corpus or your own captions."
    )
