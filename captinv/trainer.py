"""The optimisation loop: only the new vectors learn, the model stays frozen.

The vectors of all trained words live in one float32 leaf tensor per text
encoder, so AdamW keeps state for those rows alone (not for a 49408-row
vocabulary) and mixed precision never touches the master copy. The loop
reports through callbacks, which the CLI maps to a progress bar and the WebUI
to its shared progress state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from captinv.backends.base import Conditioning, ModelBackend, Vectors
from captinv.config import InvertConfig
from captinv.errors import TrainingDivergedError
from captinv.init_vectors import WordPlan
from captinv.latents import sample_draws
from captinv.loss import diffusion_loss, init_pull
from captinv.templates import templates_that_fit

MAX_CONSECUTIVE_ROLLBACKS = 5


@dataclass
class Progress:
    step: int
    total: int
    loss: float
    learning_rate: float
    elapsed: float  # seconds
    eta: float  # seconds


@dataclass
class Callbacks:
    progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    preview: Callable[[int, dict[str, Vectors]], None] | None = None
    preview_every: int = 0


@dataclass
class TrainResult:
    embeddings: dict[str, Vectors]  # trained word name -> vectors (CPU, float32)
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    interrupted: bool = False
    rollbacks: int = 0


ReportT = TypeVar("ReportT", bound="RunReport")


@dataclass(kw_only=True)
class RunReport:
    """What a finished run tells the user whatever it trained, so the CLI, the tab and the API
    show inversions and Perfusion concepts the same way. Keyword-only so each kind of run can add
    its own required fields."""

    text: str  # the init text
    sentence: str  # the init text with the trained words replaced by their names
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    rollbacks: int = 0

    @classmethod
    def of_training(cls: type[ReportT], result: TrainResult, started: float, **fields: Any) -> ReportT:
        """The report of `result`, timed from `started` (a `time.perf_counter()` reading)."""
        return cls(
            losses=result.losses,
            steps=result.steps,
            seconds=time.perf_counter() - started,
            rollbacks=result.rollbacks,
            **fields,
        )

    def _run_fields(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "sentence": self.sentence,
            "losses": self.losses,
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "rollbacks": self.rollbacks,
        }


@dataclass(frozen=True)
class Draws:
    """Fixed (x0, noise, t, prompt) draws to compare losses across steps or runs."""

    x0: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    prompts: list[str]


class Trainer:
    def __init__(
        self, backend: ModelBackend, plan: WordPlan, latents: torch.Tensor, config: InvertConfig
    ) -> None:
        self.backend, self.plan, self.latents, self.config = backend, plan, latents, config
        trained = plan.trainable
        self.params = {
            enc.key: torch.cat([w.init[enc.key] for w in trained])
            .to(backend.device, torch.float32)
            .requires_grad_()
            for enc in backend.encoders
        }
        self.initial = {key: value.detach().clone() for key, value in self.params.items()}
        offsets = [0]
        for word in trained:
            offsets.append(offsets[-1] + word.vector_count)
        self.slices = {w.name: slice(a, b) for w, a, b in zip(trained, offsets, offsets[1:])}
        self.templates = templates_that_fit(config.templates, plan.vector_count, backend.count_tokens)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=config.learning_rate, weight_decay=0.0)
        self._last_good = [value.detach().clone() for value in self._trained()]
        self.lr_scale = 1.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        amp_dtype = backend.dtype if backend.dtype in (torch.float16, torch.bfloat16) else None
        self._amp = config.mixed_precision and backend.device.type == "cuda" and amp_dtype is not None
        self._amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=self._amp and amp_dtype == torch.float16)
        self.rollbacks = 0
        self._consecutive_rollbacks = 0

    def _param_groups(self) -> list[dict]:
        """What AdamW updates; a subclass adds its own groups (each with its own `lr`)."""
        return [{"params": list(self.params.values())}]

    def _trained(self) -> list[torch.Tensor]:
        """Every tensor the optimiser changes: guarded by the NaN check and its rollback."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @contextmanager
    def session(self) -> Iterator[None]:
        """What a run changes on the host for its duration; a subclass adds its own changes."""
        with self.backend.training(self.config.gradient_checkpointing):
            yield

    def _lr_factor(self, step: int) -> float:
        cfg = self.config
        if step < cfg.warmup_steps:
            return self.lr_scale * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        decay = {
            "constant": 1.0,
            "linear": 1.0 - progress,
            "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
        }
        return self.lr_scale * max(0.0, decay[cfg.lr_schedule])

    def embeddings(self) -> dict[str, Vectors]:
        """Live (differentiable) views of each trained word's rows."""
        return {name: {key: p[part] for key, p in self.params.items()} for name, part in self.slices.items()}

    def snapshot(self) -> dict[str, Vectors]:
        return {
            name: {key: value.detach().cpu().clone() for key, value in vectors.items()}
            for name, vectors in self.embeddings().items()
        }

    def _prompts(self, count: int) -> list[str]:
        choice = torch.randint(0, len(self.templates), (count,), generator=self.generator)
        sentence = self.plan.sentence()
        return [self.templates[i].format(sentence) for i in choice.tolist()]

    def fixed_draws(self, count: int, seed: int) -> Draws:
        generator = torch.Generator().manual_seed(seed)
        x0, noise, t = sample_draws(self.latents, count, self.backend.schedule.num_timesteps, generator)
        return Draws(x0, noise, t, [self.templates[0].format(self.plan.sentence())] * count)

    def _autocast(self):
        if not self._amp:
            return nullcontext()
        return torch.autocast(self.backend.device.type, dtype=self._amp_dtype)

    def _conditioning(self, prompts: list[str], *, training: bool) -> Conditioning:
        """The prompts' conditioning with the live vectors; `training` is False for evaluation."""
        return self.backend.conditioning(prompts, self.embeddings())

    def _loss(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prompts: list[str], *, training: bool
    ) -> torch.Tensor:
        with self._autocast():
            cond = self._conditioning(prompts, training=training)
            loss = diffusion_loss(self.backend, x0, noise, t, cond)
        if self.config.init_l2:
            loss = loss + self.config.init_l2 * init_pull(self.params, self.initial)
        return loss

    @torch.no_grad()
    def evaluate(self, draws: Draws) -> float:
        return self._loss(draws.x0, draws.noise, draws.timesteps, draws.prompts, training=False).item()

    def step(self) -> float | None:
        """One optimisation step; None when it was rolled back by the NaN guard."""
        x0, noise, t = sample_draws(
            self.latents, self.config.batch_size, self.backend.schedule.num_timesteps, self.generator
        )
        loss = self._loss(x0, noise, t, self._prompts(self.config.batch_size), training=True)
        value = loss.item()
        if not math.isfinite(value):
            self._roll_back()
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            for group in self.optimizer.param_groups:  # each group its own norm: scales differ
                torch.nn.utils.clip_grad_norm_(group["params"], self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if not all(torch.isfinite(p).all() for p in self._trained()):
            self._roll_back()
            return None
        self._consecutive_rollbacks = 0
        self._keep_good()
        return value

    @torch.no_grad()
    def _keep_good(self) -> None:
        """Remember the state after a good step; a subclass adds what its steps change besides the
        optimised tensors (a running average), and restores it in `_restore_good`."""
        for good, live in zip(self._last_good, self._trained()):
            good.copy_(live.detach())

    @torch.no_grad()
    def _restore_good(self) -> None:
        for live, good in zip(self._trained(), self._last_good):
            live.copy_(good)

    @torch.no_grad()
    def _roll_back(self) -> None:
        """Restore the last finite vectors and halve the learning rate instead of writing garbage."""
        self.rollbacks += 1
        self._consecutive_rollbacks += 1
        if self._consecutive_rollbacks > MAX_CONSECUTIVE_ROLLBACKS:
            raise TrainingDivergedError(
                "The loss stayed NaN/inf after several rollbacks. Lower the learning rate; on a GPU try "
                "disabling mixed precision."
            )
        self._restore_good()
        self.optimizer.state.clear()
        self.lr_scale *= 0.5
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self._lr_factor(self.scheduler.last_epoch)

    def run(self, callbacks: Callbacks | None = None) -> TrainResult:
        callbacks = callbacks or Callbacks()
        result = TrainResult(embeddings={})
        total = self.config.steps
        with self.session():
            start = time.perf_counter()
            for step in range(1, total + 1):
                if callbacks.should_stop and callbacks.should_stop():
                    result.interrupted = True
                    break
                loss = self.step()
                result.steps = step
                if loss is not None:
                    result.losses.append(loss)
                elapsed = time.perf_counter() - start
                if callbacks.progress:
                    callbacks.progress(
                        Progress(
                            step,
                            total,
                            loss if loss is not None else math.nan,
                            self.optimizer.param_groups[0]["lr"],
                            elapsed,
                            elapsed / step * (total - step),
                        )
                    )
                if callbacks.preview and callbacks.preview_every and step % callbacks.preview_every == 0:
                    callbacks.preview(step, self.snapshot())
        result.embeddings = self.snapshot()
        result.rollbacks = self.rollbacks
        return result
