"""Prompts that surround the pseudo-words during training.

The lists are the "imagenet small" templates of Gal et al. (and of every
textual-inversion trainer since); varying the frame keeps the vectors from
absorbing "a photo of" itself.
"""

from __future__ import annotations

from collections.abc import Callable

from captinv.config import MAX_VECTORS, TemplateSet

OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)

STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a good painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
)

_SETS = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES, "none": ("{}",)}


def templates_that_fit(
    kind: TemplateSet, vector_count: int, count_tokens: Callable[[str], int]
) -> tuple[str, ...]:
    """Templates whose own words leave room for `vector_count` pseudo-word vectors.

    A long caption can leave no room for "a close-up photo of the"; falling back
    to the bare caption beats truncating the pseudo-words away.
    """
    fitting = tuple(t for t in _SETS[kind] if count_tokens(t.format("")) + vector_count <= MAX_VECTORS)
    return fitting or ("{}",)
