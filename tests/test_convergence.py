"""The product's promise on the packaged mini world: a caption start converges sooner than `*`.

Held-out concepts (colour + shape pairs the model never saw together), one image each, two seeds
each: the caption-initialised run must reach the benchmark's loss threshold in fewer steps than
the `*` run (median over the runs), and after the default number of steps its images must show
the concept at least as well, by the world's detector (median again).
"""

from __future__ import annotations

import math
import statistics

import pytest

from bench.convergence.__main__ import THRESHOLD, run_all
from bench.convergence.concepts import miniworld_concepts
from bench.convergence.measure import Settings
from captinv.config import InvertConfig

SETTINGS = Settings(steps=InvertConfig.steps, eval_every=10, eval_draws=24, images=3, sample_steps=10)
CONCEPTS = miniworld_concepts(3)
SEEDS = [0, 1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs():
    return run_all("miniworld", CONCEPTS, SEEDS, ["caption", "star"], SETTINGS, device="cpu")


def _median(values) -> float:
    return statistics.median(math.inf if value is None else value for value in values)


def test_caption_start_is_the_plain_caption(runs):
    """With no template around them, freshly initialised pseudo-words condition the model exactly
    as the caption's own words do: the normalised loss starts at 0."""
    starts = [run.gap[0] for run in runs if run.mode == "caption"]
    assert max(abs(value) for value in starts) < 1e-3, starts


def test_caption_reaches_the_threshold_in_fewer_steps_than_star(runs):
    steps = {
        mode: [run.steps_to(THRESHOLD) for run in runs if run.mode == mode] for mode in ("caption", "star")
    }
    assert len(steps["caption"]) == len(CONCEPTS) * len(SEEDS)
    assert _median(steps["caption"]) < _median(steps["star"]), steps


def test_caption_reconstructs_at_least_as_well_after_the_default_steps(runs):
    scores = {
        mode: [run.scores[InvertConfig.steps] for run in runs if run.mode == mode]
        for mode in ("caption", "star")
    }
    assert statistics.median(scores["caption"]) >= statistics.median(scores["star"]), scores
    assert statistics.median(scores["caption"]) >= 0.75, scores
