"""Covariance time at SD1.5's text-encoder size: the path before #15 against today's, in one run.

The model is CLIP-L's text architecture (12 layers, 768 wide, 3072 MLP, quick-GELU; random
weights, the real tokenizer) in a pipeline whose other parts are tiny: only the text path runs.
- old: the 5000-prompt templated corpus, every prompt's full 77-position conditioning, batches of
  32, all 5000 prompts. Timed on its first `sample` prompts and scaled to 5000 (the cost per
  prompt does not change along the corpus).
- new: `text_covariance` as training calls it (each prompt's own positions, length-sorted batches
  of 64, stopping once converged), run to the end.
Random weights are not CLIP's: how many prompts convergence takes on the real encoder can differ
(the mini world's trained encoder is the other data point, see `convergence`).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.perfusion.reference import old_corpus
from bench.step_cost import clip_l
from captinv.backends.diffusers_backend import DiffusersBackend
from captinv.config import PerfusionOptions
from captinv.perfusion.corpus import Corpus
from captinv.perfusion.covariance import estimate_covariance
from captinv.perfusion.textpath import text_covariance

OLD_PROMPTS = 5000


def clip_l_backend(tmp: Path) -> DiffusersBackend:
    from tests import factories

    pipe = factories.sd_pipeline(tmp, width=768)
    torch.manual_seed(0)
    pipe.text_encoder = clip_l().eval()
    return DiffusersBackend(pipe, "clip-l-random")


@dataclass
class SpeedResult:
    old_seconds: float  # projected to 5000 prompts
    old_sampled: int
    new_seconds: float
    new_prompts: int
    converged: bool
    threads: int

    @property
    def ratio(self) -> float:
        return self.old_seconds / self.new_seconds

    def __str__(self) -> str:
        return (
            f"covariance at CLIP-L size, {self.threads} threads: old path {self.old_seconds:.0f} s for "
            f"{OLD_PROMPTS} prompts (timed on {self.old_sampled}), new path {self.new_seconds:.1f} s for "
            f"{self.new_prompts} prompts ({'converged' if self.converged else 'stopped at the limit'}): "
            f"{self.ratio:.1f}x faster"
        )


@torch.no_grad()
def measure(sample: int = 256, threads: int | None = None) -> SpeedResult:
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        backend = clip_l_backend(Path(tmp))

        def full_conditioning(prompts: list[str], padding: bool):
            return backend.context(backend.conditioning(prompts, {})), None

        started = time.perf_counter()
        estimate_covariance(
            full_conditioning,
            Corpus.of(old_corpus(OLD_PROMPTS)),
            max_prompts=sample,
            batch_size=32,
            tolerance=0.0,
        )
        old = (time.perf_counter() - started) * OLD_PROMPTS / sample
        started = time.perf_counter()
        covariance = text_covariance(backend, PerfusionOptions(), None)
        new = time.perf_counter() - started
    return SpeedResult(old, sample, new, covariance.prompts, covariance.converged, torch.get_num_threads())
