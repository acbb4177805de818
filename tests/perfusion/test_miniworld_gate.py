"""On a model with real text semantics, the default covariance keeps a concept's gate shut off it.

The packaged mini world: a held-out concept (a purple triangle, trained from "a big triangle in the
centre") with the covariance every user gets by default, its gate measured on the mini world's own
captions that name neither the concept nor its superclass, at the concept's default β and τ.
Reference numbers: `python -m bench.perfusion gate`, README "Perfusion concepts".
"""

from __future__ import annotations

import pytest

from bench.perfusion import miniworld as mw
from captinv.backends.diffusers_backend import DiffusersBackend
from captinv.config import PerfusionOptions
from captinv.perfusion.selectivity import gate_selectivity
from captinv.perfusion.textpath import text_covariance

pytestmark = pytest.mark.slow

STEPS = 100
# Bounds from the README's table (`python -m bench.perfusion gate`, β 0.7: 15-20 % of unrelated word
# positions open on the mini world, whose tiny text encoder separates words far less than CLIP).
WORDS = 0.20  # share of unrelated word positions (BOS, words, EOS) with the gate above 0.05
PADDING = 0.25  # the same for their padding positions
SUPERCLASS = 0.1  # mean gate on the superclass word: its keys are locked, the edit stays off it
CONCEPT = 0.5  # mean gate on the concept word: trained, the edit is on there


@pytest.fixture(scope="module")
def backend() -> DiffusersBackend:
    return DiffusersBackend.load("miniworld", device="cpu")


def test_the_default_covariance_keeps_unrelated_tokens_shut(backend):
    covariance = text_covariance(backend, PerfusionOptions(), None)
    target = mw.Target("purple", "triangle")
    concept = mw.train(backend, target, covariance, steps=STEPS, batch=4)[STEPS]
    found = gate_selectivity(backend, concept, mw.in_domain_captions(96, seed=99), frames=mw.FRAMES)
    assert found.prompts >= 60
    assert found.off_concept_open < WORDS and found.padding_open < PADDING, found
    assert found.superclass_gate < SUPERCLASS and found.concept_gate > CONCEPT, found
