"""The text path a concept is trained with: its fingerprint and its covariance.

The text path is everything between a prompt and the cross-attention's
context: the text encoder's weights (a fine-tune, a LoRA that trains it), clip
skip, the padding convention, SDXL's concatenation. A concept's gate
σ((uᵀe − β)/τ) is calibrated on that path's encodings; on another path the
same β opens on other words. The fingerprint is the encodings of a few fixed
probe prompts, kept as a hash (the very same path) and a short check vector of
random projections (the same path up to numerical noise: fp16 against fp32,
GPU against CPU), small enough for the concept file's metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch

from captinv.backends.base import ModelBackend
from captinv.config import PerfusionOptions
from captinv.perfusion.corpus import Corpus, build_corpus, read_captions
from captinv.perfusion.covariance import (
    Covariance,
    CovarianceCache,
    CovarianceProgress,
    estimate_covariance,
)

logger = logging.getLogger(__name__)

PROBE_PROMPTS = (
    "a photo of a cat",
    "an oil painting of a red house by the sea at sunset",
    "portrait of a smiling woman, studio lighting",
    "",
)
_DIRECTIONS = 8  # random projections per checked row
TOLERANCE = 0.02
"""Largest relative difference of a checked row that still counts as the same text path (fp16
against fp32 differs by ~1e-3; another clip skip or text-encoder LoRA by tens of percent)."""


@dataclass(frozen=True)
class TextFingerprint:
    family: str
    width: int
    digest: str  # 16 hex digits of the rounded probe encodings
    check: tuple[tuple[float, ...], ...]  # per checked row, its projections

    @property
    def key(self) -> str:
        """`<family>-<width>-<digest>`: names the covariance cache entry of this path."""
        return f"{self.family}-{self.width}-{self.digest}"

    def to_metadata(self) -> dict[str, str]:
        rows = [[float(f"{value:.5g}") for value in row] for row in self.check]
        return {"text_path": self.key, "text_check": json.dumps(rows, separators=(",", ":"))}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> TextFingerprint | None:
        """The fingerprint a concept file stores, or None for files written before there was one."""
        try:
            family, width, digest = metadata["text_path"].rsplit("-", 2)
            check = tuple(tuple(float(v) for v in row) for row in json.loads(metadata["text_check"]))
            return cls(family, int(width), digest, check)
        except (KeyError, ValueError, TypeError):
            return None

    def difference(self, other: TextFingerprint) -> float:
        """Largest relative difference of a checked row; infinite for another width or layout."""
        if self.width != other.width or len(self.check) != len(other.check):
            return float("inf")
        ours, theirs = torch.tensor(self.check), torch.tensor(other.check)
        return float(((ours - theirs).norm(dim=1) / theirs.norm(dim=1).clamp_min(1e-12)).max())


@torch.no_grad()
def fingerprint(backend: ModelBackend) -> TextFingerprint:
    """Encode the probe prompts through the backend's conditioning path (padding included)."""
    context = backend.context(backend.conditioning(list(PROBE_PROMPTS), {})).float().cpu()
    digest = hashlib.sha256(torch.round(context * 1000).to(torch.int64).numpy().tobytes()).hexdigest()[:16]
    width = context.shape[-1]
    directions = torch.randn(width, _DIRECTIONS, generator=torch.Generator().manual_seed(0)) / width**0.5
    rows = [context[0, 0]]  # BOS, the same for every prompt
    for index, prompt in enumerate(PROBE_PROMPTS):
        end = min(backend.count_tokens(prompt) + 1, context.shape[1] - 1)  # EOS
        rows += [context[index, 1 : end + 1].mean(0), context[index, -1]]  # words and EOS; last padding
    check = torch.stack(rows) @ directions
    return TextFingerprint(backend.family, width, digest, tuple(tuple(row.tolist()) for row in check))


def text_path_warning(stored: Mapping[str, str], backend: ModelBackend, name: str) -> str | None:
    """A warning when the concept (metadata `stored`) was trained with another text path than
    `backend`'s, else None. Widths are not compared here: `PerfusionConcept.check_fits` refuses those."""
    trained = TextFingerprint.from_metadata(stored)
    if trained is None:
        return None
    live = fingerprint(backend)
    difference = live.difference(trained)
    if live.digest == trained.digest or difference <= TOLERANCE:
        return None
    return (
        f"Perfusion concept '{name}' was trained with another text path ({trained.key}; this model: "
        f"{live.key}, encodings {difference:.0%} apart): other text-encoder weights, clip skip or a LoRA "
        "on the text encoder. Its gate may open on the wrong words; retrain it on this model if results "
        "look off."
    )


def covariance_corpus(options: PerfusionOptions) -> Corpus:
    captions = read_captions(options.covariance_captions) if options.covariance_captions else []
    return build_corpus(captions)


def text_covariance(
    backend: ModelBackend,
    options: PerfusionOptions,
    cache: CovarianceCache | None,
    *,
    progress: Callable[[CovarianceProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Covariance:
    """The covariance of this text path over the options' corpus, from the cache when it has one for
    this path and corpus. A cached estimate that stopped at a lower prompt limit is redone."""
    corpus = covariance_corpus(options)
    key = f"{fingerprint(backend).key}-{corpus.corpus_id}"
    cached = cache.load(key, corpus.corpus_id) if cache is not None else None
    if cached is not None and (
        cached.converged or cached.prompts >= min(len(corpus), options.covariance_prompts)
    ):
        return replace(cached, source=key)
    covariance = estimate_covariance(
        backend.text_encodings,
        corpus,
        max_prompts=options.covariance_prompts,
        progress=progress,
        should_stop=should_stop,
    )
    if cache is not None:
        cache.save(key, covariance)
    return replace(covariance, source=key)
