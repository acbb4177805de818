"""The uncentred covariance C = E[e eᵀ] of the text encodings the UNet sees.

Training needs C⁻¹i* every step (i* moves), inference does not (the concept
file stores C⁻¹i*). C is estimated once per text path and corpus through the
caller's own encoder (`encode(prompts, padding) -> (encodings, own positions)`),
so clip skip, SDXL's concatenated encoders and the model's weights are exactly
what the UNet gets.

Every position the UNet attends to belongs in C, padding included: without
it the gate opens on a third of the padding positions of unrelated prompts
(README, "Perfusion concepts"). But the padding is most of 77 positions, and
a causal encoder gives each prompt's own positions (BOS, words, EOS) the same
encodings whether or not padding follows. So most prompts are encoded only up
to their batch's longest EOS, and every `padding_every`-th prompt in full, its
padding rows weighted by `padding_every`: the same expectation for a fraction
of the cost.

The estimate stops when more prompts no longer move it: after each window of
prompts, the gate inputs s = uᵀq of probe encodings (u = C⁻¹p / pᵀC⁻¹p for each
probe p) under the current estimate are compared with those under the estimate
from half as many prompts, which is about the current estimate's own error; it
has converged when 90 % of them moved less than the tolerance. Sums are float64
on the CPU (also for devices without float64); the count only fixes the scale,
which the edit ignores. A small ridge λI (λ = shrinkage·tr(C)/d) keeps the
Cholesky factor defined when the corpus does not span all d directions.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from captinv import files
from captinv.embedding_io import COVARIANCE_FORMAT as FORMAT
from captinv.errors import FileFormatError, Interrupted
from captinv.perfusion.corpus import Corpus
from captinv.perfusion.errors import CovarianceError

logger = logging.getLogger(__name__)

Encode = Callable[[list[str], bool], tuple[torch.Tensor, "torch.Tensor | None"]]
"""(prompts, padding) -> (encodings [B, N, d] as the UNet's cross-attention receives them, a mask
[B, N] of each prompt's own positions, or None when every position is). With padding=False the
encoder may stop at the batch's longest prompt; with True it returns every position the UNet sees."""

DEFAULT_SHRINKAGE = 1e-4
DEFAULT_TOLERANCE = 0.05
"""Change of a probe's gate input s (between the estimate and the one from half as many prompts)
that 90 % of probe pairs must stay under; s is compared with β at τ = 0.15. Measured on the mini
world, how selective a trained concept's gate is does not change from a few hundred prompts on, where
this change is still about 0.05 (`python -m bench.perfusion convergence`)."""
DEFAULT_PADDING_EVERY = 4
VERSION = 2
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Covariance:
    matrix: torch.Tensor  # [d, d] float64 on the CPU
    count: int  # token encodings averaged
    corpus_id: str
    prompts: int = 0  # prompts encoded
    converged: bool = False  # stopped because more prompts no longer moved it
    source: str = ""  # text path and corpus (the cache id): concepts of one source combine exactly

    @property
    def width(self) -> int:
        return self.matrix.shape[0]

    def factor(self, shrinkage: float = DEFAULT_SHRINKAGE) -> torch.Tensor:
        """Lower Cholesky factor (float64, CPU) of C + λI with λ = shrinkage·tr(C)/d."""
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


@dataclass(frozen=True)
class CovarianceProgress:
    """Where an estimate stands: `expected` is the forecast of prompts it will take (at most the limit)."""

    prompts: int
    expected: int
    elapsed: float  # seconds
    eta: float  # seconds
    change: float | None  # the last convergence measure (None before the first check)


def covariance_solve(factor: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """C⁻¹v for rows v [..., d], given the Cholesky factor of C; differentiable in v."""
    rows = vectors.reshape(-1, vectors.shape[-1]).to(factor.dtype)
    return torch.cholesky_solve(rows.transpose(0, 1), factor).transpose(0, 1).reshape(vectors.shape)


def _selected_rows(
    encodings: torch.Tensor, weights: torch.Tensor | None, width: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The counted rows [n, d] as float64 on the CPU (MPS has no float64), and their weights."""
    if encodings.dim() != 3 or encodings.shape[-1] != width:
        raise CovarianceError(
            f"encode() returned shape {tuple(encodings.shape)}; expected [batch, tokens, {width}]."
        )
    rows = encodings.detach()
    if weights is None:
        return rows.reshape(-1, width).cpu().to(torch.float64), None
    weights = weights.to(rows.device).expand(rows.shape[:-1])
    counted = weights > 0
    return rows[counted].cpu().to(torch.float64), weights[counted].cpu().to(torch.float64)


class CovarianceAccumulator:
    """Σ w e eᵀ and Σ w over weighted encodings, one batch at a time, in float64 on the CPU."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.total = torch.zeros(width, width, dtype=torch.float64)
        self.count = 0.0

    def update(self, encodings: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Add the rows of `encodings` [B, N, d] with their `weights` (broadcast to [B, N]; 0 leaves a
        row out, None counts every row once); returns the rows counted."""
        rows, row_weights = _selected_rows(encodings, weights, self.width)
        weighted = rows if row_weights is None else rows * row_weights[:, None]
        self.total += weighted.transpose(0, 1) @ rows
        self.count += rows.shape[0] if row_weights is None else float(row_weights.sum())
        return rows

    def result(self, corpus_id: str, prompts: int = 0, converged: bool = False) -> Covariance:
        if self.count == 0:
            raise CovarianceError("No text encodings were counted; the corpus or the mask is empty.")
        return Covariance(self.total / self.count, round(self.count), corpus_id, prompts, converged)


class _Convergence:
    """The gate inputs of probe encodings under each checked estimate, and how far they still move."""

    def __init__(self, probes: torch.Tensor) -> None:
        self.probes = probes  # [P, d] float64
        self.history: list[tuple[int, torch.Tensor]] = []

    def change(self, accumulator: CovarianceAccumulator, prompts: int) -> float | None:
        """The 90th percentile of |s_now − s_half| over probe pairs (the largest few follow the least
        covered directions and settle last); None until there is an estimate from half as many prompts."""
        factor = accumulator.result("").factor()
        solved = covariance_solve(factor, self.probes)
        directions = solved / (solved * self.probes).sum(-1, keepdim=True)
        gate_inputs = directions @ self.probes.transpose(0, 1)
        earlier = [s for n, s in self.history if 2 * n <= prompts]
        self.history.append((prompts, gate_inputs))
        return float((gate_inputs - earlier[-1]).abs().quantile(0.9)) if earlier else None


def _batches(
    prompts: Sequence[str], batch_size: int, padding_every: int | None
) -> list[tuple[list[str], bool]]:
    """(batch, with padding): every `padding_every`-th prompt (in corpus order, so whatever its
    length) goes into batches with padding; each set is sorted by length so that little of a
    batch is wasted on another prompt's padding."""
    padded = list(prompts[::padding_every]) if padding_every else []
    rest = [p for i, p in enumerate(prompts) if not padding_every or i % padding_every]
    found = []
    for group, with_padding in ((padded, True), (rest, False)):
        ordered = sorted(group, key=len)
        found += [(ordered[i : i + batch_size], with_padding) for i in range(0, len(ordered), batch_size)]
    return found


def _weights(own: torch.Tensor | None, padding_weight: int) -> torch.Tensor | None:
    """1 for a prompt's own positions, `padding_weight` for its padding (0: left out)."""
    if own is None:
        return None
    return torch.where(own, 1.0, float(padding_weight))


@torch.no_grad()
def estimate_covariance(
    encode: Encode,
    corpus: Corpus,
    *,
    max_prompts: int | None = None,
    batch_size: int = 64,
    window: int = 512,
    tolerance: float = DEFAULT_TOLERANCE,
    padding_every: int | None = DEFAULT_PADDING_EVERY,
    progress: Callable[[CovarianceProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Covariance:
    """Stream the corpus through `encode`, `window` prompts at a time, until the estimate converges
    or `max_prompts` are done; every `padding_every`-th prompt counts its padding (None: none does)."""
    limit = min(len(corpus), max_prompts or len(corpus))
    if limit == 0:
        raise CovarianceError("The covariance corpus is empty.")
    started = time.perf_counter()
    accumulator: CovarianceAccumulator | None = None
    convergence: _Convergence | None = None
    done, expected, change, converged = 0, limit, None, False
    probes: list[torch.Tensor] = []
    for start in range(0, limit, window):
        chunk = corpus.prompts[start : min(start + window, limit)]
        for batch, with_padding in _batches(chunk, batch_size, padding_every):
            if should_stop is not None and should_stop():
                raise Interrupted("Covariance estimation stopped; nothing was saved.")
            encodings, own = encode(batch, with_padding)
            accumulator = accumulator or CovarianceAccumulator(encodings.shape[-1])
            rows = accumulator.update(encodings, _weights(own, padding_every if with_padding else 0))
            if start == 0:  # probes: random rows of every batch of the first window
                pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(len(probes)))
                probes.append(rows[pick[:8]])
            done += len(batch)
            if progress is not None:
                elapsed = time.perf_counter() - started
                progress(
                    CovarianceProgress(done, expected, elapsed, elapsed / done * (expected - done), change)
                )
        convergence = convergence or _Convergence(torch.unique(torch.cat(probes), dim=0))
        if accumulator.count >= 2 * accumulator.width and done < limit:
            change = convergence.change(accumulator, done)
            if change is not None and change <= tolerance:
                converged = True
                break
            if change is not None:  # the change shrinks about as 1/√prompts
                expected = min(limit, max(done + window, round(done * (change / max(tolerance, 1e-9)) ** 2)))
    if progress is not None:  # the bar's end: done is all there was to do
        progress(CovarianceProgress(done, done, time.perf_counter() - started, 0.0, change))
    covariance = accumulator.result(corpus.corpus_id, done, converged)
    logger.info(
        "covariance of %d encodings from %d prompts (width %d, %s, %.1f s)",
        covariance.count, done, covariance.width,
        "converged" if converged else f"stopped at the limit, last change {change}",
        time.perf_counter() - started,
    )  # fmt: skip
    return covariance


class CovarianceCache:
    """Covariances in one folder, one file per id (the text path's fingerprint and the corpus id)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.saved: list[Path] = []  # files this cache object wrote

    def path(self, cache_id: str) -> Path:
        if not _SAFE_ID.fullmatch(cache_id):
            raise CovarianceError(f"'{cache_id}' is not usable as a cache id (letters, digits, . _ - only).")
        return self.folder / f"{cache_id}.safetensors"

    def load(self, cache_id: str, corpus_id: str) -> Covariance | None:
        """The cached covariance of `corpus_id`, or None when there is none (or it is of another corpus)."""
        path = self.path(cache_id)
        if not path.is_file():
            return None
        try:
            tensors, meta = files.read_safetensors(path)
            if meta.get("format") != FORMAT or meta.get("id") != cache_id:
                raise CovarianceError(
                    f"{path.name} is not the covariance '{cache_id}'; delete it to re-estimate."
                )
            if int(meta.get("version", "0")) != VERSION or meta.get("corpus_id") != corpus_id:
                logger.info(
                    "%s was estimated otherwise (another corpus or version); re-estimating", path.name
                )
                return None
            matrix = tensors["covariance"]
            if (
                matrix.dim() != 2
                or matrix.shape[0] != matrix.shape[1]
                or not bool(torch.isfinite(matrix).all())
            ):
                raise CovarianceError(f"{path.name} holds no usable covariance; delete it to re-estimate.")
            return Covariance(
                matrix.to(torch.float64),
                int(meta["count"]),
                meta["corpus_id"],
                int(meta["prompts"]),
                meta["converged"] == "true",
            )
        except (FileFormatError, KeyError, ValueError) as err:
            raise CovarianceError(f"{path.name} is damaged ({err}); delete it to re-estimate.") from err

    def save(self, cache_id: str, covariance: Covariance) -> Path:
        metadata = {
            "format": FORMAT,
            "version": str(VERSION),
            "id": cache_id,
            "count": str(covariance.count),
            "corpus_id": covariance.corpus_id,
            "prompts": str(covariance.prompts),
            "converged": "true" if covariance.converged else "false",
            "width": str(covariance.width),
        }
        data = files.safetensors_bytes({"covariance": covariance.matrix}, metadata)
        path = files.write_file(self.path(cache_id), data, overwrite=True)
        self.saved.append(path)
        return path
