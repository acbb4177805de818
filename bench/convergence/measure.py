"""One inversion of one concept from one initialisation, with its loss curve and a reconstruction.

The curve is not the noisy per-step training loss: every `eval_every` steps the current vectors
are scored on one fixed set of draws (the same image latents, noise and timesteps for every mode
of a concept and seed), so two curves differ only by what the vectors are. The loss is normalised
per concept and seed as `(L - L_caption) / (L_empty - L_caption)`: 1 is what the model does with
no text at all, 0 is what it does when told the reference caption in plain words, below 0 is
better than the truth as written. That scale is shared by concepts whose raw losses differ.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.convergence.concepts import Concept
from captinv.backends.base import ModelBackend, Vectors
from captinv.config import InvertConfig
from captinv.init_vectors import WordPlan
from captinv.inversion import prepare
from captinv.latents import build_latent_cache, sample_draws
from captinv.loss import diffusion_loss
from captinv.trainer import Callbacks, Draws, Trainer

_TABLE_SAMPLE = 4096  # token rows whose statistics random vectors are drawn from
SCORED = ("colour", "shape", "size")
_VOCAB = 49406  # every Stable Diffusion family uses CLIP's BPE: 49408 rows, the last two BOS/EOS
BASE_NAME = "cv"  # of the pseudo-words; names take no part in the numbers, only in the prompt's text


Scorer = Callable[[str, dict[str, Vectors]], float]


@dataclass(frozen=True)
class Settings:
    """What every mode shares: steps, learning rate, batch, templates, evaluation."""

    steps: int = 200
    learning_rate: float = InvertConfig.learning_rate
    batch_size: int = InvertConfig.batch_size
    templates: str = "none"
    flip: str = "off"  # InvertConfig.flip: "auto" applies the CLI's rule to each mode's init text
    eval_every: int = 10
    eval_draws: int = 48
    score_at: tuple[int, ...] = (InvertConfig.steps,)  # steps at which to reconstruct (and at the end)
    images: int = 4  # generated per reconstruction
    sample_steps: int = 20
    guidance: float = 8.0

    def config(self, text: str, seed: int, *, auto_stop: bool = False) -> InvertConfig:
        """The inversion's options; curves run all `steps` unless `auto_stop` is asked for."""
        return InvertConfig(
            init="text",
            text=text,
            steps=self.steps,
            auto_stop=auto_stop,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            templates=self.templates,
            flip=self.flip,
            seed=seed,
        )


@dataclass
class Run:
    concept: str
    mode: str
    seed: int
    init_text: str
    steps: list[int]
    loss: list[float]  # fixed-draw loss at `steps`
    gap: list[float]  # the same, normalised (see the module docstring)
    train_loss: list[float]  # the per-step training loss, for reference
    scores: dict[int, float] = field(default_factory=dict)  # step -> reconstruction score
    seconds: float = 0.0

    def steps_to(self, threshold: float) -> int | None:
        """First evaluated step at which the normalised loss is at or below `threshold`."""
        return next((step for step, value in zip(self.steps, self.gap) if value <= threshold), None)


@dataclass(frozen=True)
class Reference:
    """The fixed draws of one concept and seed, and the two losses that define the scale."""

    draws: Draws
    empty: float
    caption: float

    def normalise(self, loss: float) -> float:
        return (loss - self.caption) / (self.empty - self.caption)


def latents_of(backend: ModelBackend, concept: Concept, flip: bool) -> torch.Tensor:
    """The concept's image (and its mirror image with `flip`); evaluation draws come from the
    image as it is, whatever the modes train on."""
    return build_latent_cache(
        backend,
        [concept.image],
        backend.default_resolution,
        flip=flip,
        random_crops=0,
        generator=torch.Generator().manual_seed(0),
    )


@torch.no_grad()
def reference(
    backend: ModelBackend, concept: Concept, latents: torch.Tensor, settings: Settings, seed: int
) -> Reference:
    x0, noise, t = sample_draws(
        latents, settings.eval_draws, backend.schedule.num_timesteps, torch.Generator().manual_seed(seed)
    )
    frame = "{}" if settings.templates == "none" else "a photo of a {}"
    draws = Draws(x0, noise, t, [])

    def loss(text: str) -> float:
        return draw_loss(backend, draws, frame.format(text).strip(), {})

    return Reference(draws, empty=loss(""), caption=loss(concept.caption))


@torch.no_grad()
def draw_loss(backend: ModelBackend, draws: Draws, prompt: str, embeddings: dict[str, Vectors]) -> float:
    """The loss of `prompt`, with `embeddings` spliced in, on fixed draws (their own prompts unused)."""
    cond = backend.conditioning([prompt] * len(draws.timesteps), embeddings)
    return diffusion_loss(backend, draws.x0, draws.noise, draws.timesteps, cond).item()


def randomise(plan: WordPlan, backend: ModelBackend, seed: int) -> None:
    """Give every trainable word random vectors with the token table's per-dimension mean and std."""
    generator = torch.Generator().manual_seed(seed)
    rows = backend.token_rows(torch.randint(0, _VOCAB, (_TABLE_SAMPLE,), generator=generator).tolist())
    for word in plan.trainable:
        word.init = {
            key: torch.randn(value.shape, generator=generator) * rows[key].std(0) + rows[key].mean(0)
            for key, value in word.init.items()
        }


def invert_curve(
    backend: ModelBackend,
    concept: Concept,
    mode: str,
    seed: int,
    settings: Settings,
    latents: torch.Tensor,
    ref: Reference,
    score: Scorer | None = None,
) -> Run:
    """Train `mode`'s vectors for `settings.steps` and record the fixed-draw loss as it goes.

    `score(prompt, embeddings) -> float`, when given, rates images generated from the learned
    vectors at `settings.score_at` and at the end.
    """
    started = time.perf_counter()
    text = concept.inits[mode]
    config = settings.config(text, seed)
    with tempfile.TemporaryDirectory() as tmp:
        plan = prepare(backend, text, BASE_NAME, config, Path(tmp))
    if mode == "random":
        randomise(plan, backend, seed)
    trainer = Trainer(backend, plan, latents, config)
    prompt = trainer.templates[0].format(plan.sentence())
    draws = Draws(ref.draws.x0, ref.draws.noise, ref.draws.timesteps, [prompt] * len(ref.draws.timesteps))
    run = Run(concept.name, mode, seed, text, [0], [trainer.evaluate(draws)], [], [])
    snapshots: dict[int, dict[str, Vectors]] = {}

    def progress(state) -> None:
        if state.step % settings.eval_every == 0 or state.step == settings.steps:
            run.steps.append(state.step)
            run.loss.append(trainer.evaluate(draws))

    def keep(step: int, embeddings: dict[str, Vectors]) -> None:
        if step in settings.score_at:
            snapshots[step] = embeddings

    result = trainer.run(Callbacks(progress=progress, preview=keep, preview_every=1))
    snapshots[settings.steps] = result.embeddings
    run.train_loss = result.losses
    run.gap = [ref.normalise(value) for value in run.loss]
    if score is not None:
        run.scores = {step: score(prompt, vectors) for step, vectors in sorted(snapshots.items())}
    run.seconds = time.perf_counter() - started
    return run


def detector_score(
    backend: ModelBackend,
    concept: Concept,
    settings: Settings,
    detect: Callable[[object], dict[str, str]],
    first_seed: int = 0,
) -> Scorer:
    """Fraction of the concept's colour, shape and size that `detect` reads back from generated
    images (seeds `first_seed`, `first_seed + 1`, ...). Position is left out: the mini world's
    model does not place shapes where the caption says (its own check finds the asked-for
    position about as often as chance), so it would only add the same noise to every mode."""
    truth = {key: value for key, value in (concept.truth or {}).items() if key in SCORED}

    def score(prompt: str, embeddings: dict[str, Vectors]) -> float:
        hits = 0
        for image_seed in range(first_seed, first_seed + settings.images):
            image = backend.generate(
                prompt,
                embeddings,
                steps=settings.sample_steps,
                guidance=settings.guidance,
                seed=image_seed,
            )
            found = detect(image)
            hits += sum(found.get(key) == value for key, value in truth.items())
        return hits / (settings.images * len(truth))

    return score
