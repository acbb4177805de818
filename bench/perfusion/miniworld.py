"""Perfusion on the mini world: a held-out concept, the covariances to compare, training, scores.

A concept is a held-out colour + shape pair (never seen together in the model's training), one
image, trained from the caption *without* its colour ("a big triangle in the centre", superclass
"triangle"), so the colour is what the concept has to learn: reconstruction is the share of
colour and shape the world's detector reads back from images of "a big <concept> in the centre".
The gate is measured on mini-world captions that name neither the concept nor the superclass
(in-domain) and on captinv's generated held-out prompts (generic).
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.miniworld.train import TrainConfig, training_captions
from bench.miniworld.world import Scene, detect, sample_scenes
from bench.perfusion.reference import old_corpus
from captinv.backends.base import ModelBackend
from captinv.config import InvertConfig, PerfusionOptions
from captinv.latents import build_latent_cache
from captinv.perfusion import editing
from captinv.perfusion.concept import PerfusionConcept
from captinv.perfusion.corpus import Corpus
from captinv.perfusion.covariance import Covariance, estimate_covariance
from captinv.perfusion.selectivity import GateSelectivity, gate_selectivity
from captinv.perfusion.textpath import text_covariance
from captinv.perfusion.training import PerfusionTrainer, plan_concept
from captinv.trainer import Callbacks

NAME = "concept"
TARGETS = (("purple", "triangle"), ("yellow", "circle"), ("green", "square"), ("orange", "diamond"))
_LEAVE_OUT = (None, None, None, None, None, "shape", "colour")  # ~70 / 15 / 15 %, as the model's training


@dataclass(frozen=True)
class Target:
    colour: str
    shape: str

    @property
    def text(self) -> str:
        return f"a big {self.shape} in the centre"

    def image(self):
        return Scene(self.colour, self.shape, "big", "centre").render(32)


def in_domain_captions(count: int, seed: int) -> list[str]:
    """Captions as the mini world's model was trained on (templates, left-out words included)."""
    config = TrainConfig(out=Path("."), seed=seed)
    rng = random.Random(seed)
    captions = []
    for index, scene in enumerate(sample_scenes(seed, count, "train")):
        captions += training_captions(
            [scene], TrainConfig(out=config.out, seed=seed + index), rng.choice(_LEAVE_OUT)
        )
    return captions


def all_positions(backend: ModelBackend):
    """The pre-#15 way: every one of the 77 positions, padding included."""

    def encode(prompts: list[str], padding: bool):
        return backend.context(backend.conditioning(prompts, {})), None

    return encode


def covariances(backend: ModelBackend) -> dict[str, Covariance]:
    """The old path; the default and its padding variants; in-domain captions; default + captions."""
    default = text_covariance(backend, PerfusionOptions(), None)
    corpus = _default_corpus()
    found = {
        "old (5000 templated prompts, 77 positions)": estimate_covariance(
            all_positions(backend), Corpus.of(old_corpus(5000)), tolerance=0.0
        ),
        "default (padding of every 4th prompt)": default,
        "default, no padding": estimate_covariance(
            backend.text_encodings, corpus, max_prompts=default.prompts, tolerance=0.0, padding_every=None
        ),
        "default, all padding": estimate_covariance(
            backend.text_encodings, corpus, max_prompts=default.prompts, tolerance=0.0, padding_every=1
        ),
        "in-domain captions": estimate_covariance(
            backend.text_encodings, Corpus.of(in_domain_captions(8000, seed=1))
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        captions = Path(tmp) / "captions.txt"
        captions.write_text("\n".join(in_domain_captions(2000, seed=2)))
        found["default + 2000 in-domain captions"] = text_covariance(
            backend, PerfusionOptions(covariance_captions=str(captions)), None
        )
    return found


def _default_corpus() -> Corpus:
    from captinv.perfusion.textpath import covariance_corpus

    return covariance_corpus(PerfusionOptions())


def train(
    backend: ModelBackend,
    target: Target,
    covariance: Covariance,
    *,
    steps: int,
    batch: int,
    seed: int = 0,
    checkpoints: tuple[int, ...] = (),
) -> dict[int, PerfusionConcept]:
    """The concept after `steps` (and at each checkpoint: the schedule is constant, so the state at
    step k is that of a k-step run)."""
    config = InvertConfig(  # a fixed length: the benchmarks compare states at given steps
        init="text", text=target.text, steps=steps, auto_stop=False, batch_size=batch, seed=seed
    )
    plan = plan_concept(backend, target.text, NAME, target.shape)
    latents = build_latent_cache(
        backend,
        [target.image()],
        32,
        flip=config.flip,
        random_crops=0,
        generator=torch.Generator().manual_seed(seed),
    )
    trainer = PerfusionTrainer(backend, plan, latents, config, PerfusionOptions(), covariance.factor())
    states: dict[int, tuple] = {}

    def keep(step: int, embeddings) -> None:
        if step in checkpoints or step == steps:
            states[step] = (
                embeddings[NAME],
                [v.detach().clone() for v in trainer.edit.v_targets],
                trainer.i_star.detach().clone(),
            )

    trainer.run(Callbacks(preview=keep, preview_every=1))
    concepts = {}
    for step, (embedding, values, i_star) in states.items():
        with torch.no_grad():
            for live, value in zip(trainer.edit.v_targets, values):
                live.copy_(value)
        trainer.i_star = i_star
        concept = trainer.concept(embedding, {})
        concept.metadata["covariance"] = covariance.source or covariance.corpus_id
        concepts[step] = concept
    return concepts


@torch.no_grad()
def reconstruction(backend, concept: PerfusionConcept, target: Target, images: int = 4) -> float:
    """Share of colour and shape right in images of 'a big <concept> in the centre' (no colour said)."""
    hits = 0
    with editing.applied(backend.denoiser(), concept):
        for seed in range(images):
            image = backend.generate(
                f"a big {NAME} in the centre", {NAME: concept.embedding}, seed=seed, guidance=8.0
            )
            found = detect(image)
            hits += (found.get("colour") == target.colour) + (found.get("shape") == target.shape)
    return hits / (2 * images)


FRAMES = (
    "a small {} on the left",
    "a {} at the top",
    "a big {} on the right",
    "a small {} at the bottom",
    "a photo of a {} in the centre",
    "{}",
)
"""Mini-world sentences around the concept or superclass word (the training one, 'a big {} in the
centre', is not among them)."""


def selectivities(
    backend, concept: PerfusionConcept, beta: float | None = None
) -> dict[str, GateSelectivity]:
    return {
        "in-domain": gate_selectivity(
            backend, concept, in_domain_captions(96, seed=99), frames=FRAMES, beta=beta
        ),
        "generic": gate_selectivity(backend, concept, beta=beta),
    }
