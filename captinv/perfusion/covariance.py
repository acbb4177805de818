"""The uncentred covariance C = E[e eᵀ] of the text encodings the UNet sees.

Training needs C⁻¹i* every step (i* moves), inference does not (the concept
file stores C⁻¹i*). C is estimated once per text encoder through the caller's
own conditioning path (`encode(prompts) -> [B, N, d]`, e.g. the WebUI's
`get_learned_conditioning`), so clip skip, SDXL's concatenated encoders, the
padding convention and prompt chunking are exactly what the UNet gets; by
default every position counts (BOS, words, EOS, padding), as the UNet attends
to all of them. Sums are float64; the count only fixes the scale, which the
edit ignores. A small ridge λI (λ = shrinkage·tr(C)/d) keeps the Cholesky
factor defined when the corpus does not span all d directions.

The default corpus is generated here (templates × word lists, seeded), so no
caption set has to be downloaded; a user's own caption file works the same way.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from captinv import files
from captinv.errors import FileFormatError, Interrupted
from captinv.perfusion.errors import CovarianceError

logger = logging.getLogger(__name__)

Encode = Callable[[list[str]], torch.Tensor]
"""Prompts -> text encodings [B, N, d], exactly as the UNet's cross-attention receives them."""

DEFAULT_SHRINKAGE = 1e-4
FORMAT = "captinv.perfusion.covariance"
VERSION = 1
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Covariance:
    matrix: torch.Tensor  # [d, d] float64 on the CPU
    count: int  # token encodings averaged
    corpus_id: str

    @property
    def width(self) -> int:
        return self.matrix.shape[0]

    def factor(self, shrinkage: float = DEFAULT_SHRINKAGE) -> torch.Tensor:
        """Lower Cholesky factor (float64) of C + λI with λ = shrinkage·tr(C)/d."""
        trace = float(torch.trace(self.matrix))
        if not trace > 0:
            raise CovarianceError("The covariance has no positive trace; estimate it on a non-empty corpus.")
        ridge = shrinkage * trace / self.width
        shrunk = self.matrix + ridge * torch.eye(self.width, dtype=torch.float64)
        factor, info = torch.linalg.cholesky_ex(shrunk)
        if int(info) != 0:
            raise CovarianceError(
                f"The covariance is not positive definite even with shrinkage {shrinkage}; raise the shrinkage "
                "or re-estimate it."
            )
        return factor


def covariance_solve(factor: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """C⁻¹v for rows v [..., d], given the Cholesky factor of C; differentiable in v."""
    rows = vectors.reshape(-1, vectors.shape[-1]).to(factor.dtype)
    return torch.cholesky_solve(rows.transpose(0, 1), factor).transpose(0, 1).reshape(vectors.shape)


class CovarianceAccumulator:
    """Σ e eᵀ and the number of encodings, one batch at a time, in float64."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.total: torch.Tensor | None = None  # kept on the encodings' device until the end
        self.count = 0

    def update(self, encodings: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add the rows of `encodings` [B, N, d] whose `mask` (broadcast to [B, N]) is true."""
        if encodings.dim() != 3 or encodings.shape[-1] != self.width:
            raise CovarianceError(
                f"encode() returned shape {tuple(encodings.shape)}; expected [batch, tokens, {self.width}]."
            )
        rows = encodings.detach().to(torch.float64)
        if mask is not None:
            rows = rows[mask.to(rows.device, torch.bool).expand(rows.shape[:-1])]
        rows = rows.reshape(-1, self.width)
        product = rows.transpose(0, 1) @ rows
        self.total = product if self.total is None else self.total + product
        self.count += rows.shape[0]

    def result(self, corpus_id: str) -> Covariance:
        if self.total is None or self.count == 0:
            raise CovarianceError("No text encodings were counted; the corpus or the mask is empty.")
        return Covariance((self.total / self.count).cpu(), self.count, corpus_id)


def corpus_id(prompts: Sequence[str]) -> str:
    """A short content hash of a corpus, recorded with the covariance it produced."""
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()[:16]


@torch.no_grad()
def estimate_covariance(
    encode: Encode,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    mask: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Covariance:
    """Stream `prompts` through `encode` and average e eᵀ over every (masked-in) position."""
    if not prompts:
        raise CovarianceError("The covariance corpus is empty.")
    accumulator: CovarianceAccumulator | None = None
    for start in range(0, len(prompts), batch_size):
        if should_stop is not None and should_stop():
            raise Interrupted("Covariance estimation stopped; nothing was saved.")
        encodings = encode(list(prompts[start : start + batch_size]))
        accumulator = accumulator or CovarianceAccumulator(encodings.shape[-1])
        accumulator.update(encodings, mask)
        if progress is not None:
            progress(min(start + batch_size, len(prompts)), len(prompts))
    covariance = accumulator.result(corpus_id(prompts))
    logger.info(
        "covariance of %d encodings from %d prompts (width %d)",
        covariance.count,
        len(prompts),
        covariance.width,
    )
    return covariance


class CovarianceCache:
    """Covariances in one folder, one file per id (say `<family>-<text-encoder hash>-cs<clip skip>`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, cache_id: str) -> Path:
        if not _SAFE_ID.fullmatch(cache_id):
            raise CovarianceError(f"'{cache_id}' is not usable as a cache id (letters, digits, . _ - only).")
        return self.folder / f"{cache_id}.safetensors"

    def load(self, cache_id: str) -> Covariance | None:
        """The cached covariance, or None when there is none yet."""
        path = self.path(cache_id)
        if not path.is_file():
            return None
        try:
            tensors, meta = files.read_safetensors(path)
            if meta.get("format") != FORMAT or meta.get("id") != cache_id:
                raise CovarianceError(
                    f"{path.name} is not the covariance '{cache_id}'; delete it to re-estimate."
                )
            matrix = tensors["covariance"]
            if (
                matrix.dim() != 2
                or matrix.shape[0] != matrix.shape[1]
                or not bool(torch.isfinite(matrix).all())
            ):
                raise CovarianceError(f"{path.name} holds no usable covariance; delete it to re-estimate.")
            return Covariance(matrix.to(torch.float64), int(meta["count"]), meta["corpus_id"])
        except (FileFormatError, KeyError, ValueError) as err:
            raise CovarianceError(f"{path.name} is damaged ({err}); delete it to re-estimate.") from err

    def save(self, cache_id: str, covariance: Covariance) -> Path:
        metadata = {
            "format": FORMAT,
            "version": str(VERSION),
            "id": cache_id,
            "count": str(covariance.count),
            "corpus_id": covariance.corpus_id,
            "width": str(covariance.width),
        }
        data = files.safetensors_bytes({"covariance": covariance.matrix}, metadata)
        return files.write_file(self.path(cache_id), data, overwrite=True)


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


def default_corpus(size: int = 20_000, seed: int = 0) -> list[str]:
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
    raise CovarianceError(
        f"Could not generate {size} distinct prompts; use a smaller corpus or your own captions."
    )
