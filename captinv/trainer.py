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
from captinv.errors import ConfigError, TrainingDivergedError
from captinv.init_vectors import WordPlan
from captinv.latents import FlipChoice, sample_draws
from captinv.loss import diffusion_loss, init_pull
from captinv.stopping import Plateau, PlateauRule, StopReason
from captinv.templates import templates_that_fit

MAX_CONSECUTIVE_ROLLBACKS = 5
HALF_DTYPES = (torch.float16, torch.bfloat16)


def autocast_dtype(backend: ModelBackend, config: InvertConfig) -> torch.dtype | None:
    """The autocast dtype of a run: the frozen model's half dtype, on any device autocast supports.

    Autocast runs precision-sensitive ops (softmax, norms, the loss) in float32 around a half
    model; a float16 model also gets a loss scaler. `mixed_precision` off asks for float32
    throughout, which only a float32 model can give: refused at the start rather than training
    with unscaled float16 gradients.
    """
    if backend.dtype not in HALF_DTYPES:
        return None
    if not config.mixed_precision:
        dtype = str(backend.dtype).removeprefix("torch.")
        raise ConfigError(
            f"Mixed precision is off but the model runs in {dtype}; for float32: {backend.float32_advice}. "
            "Or turn mixed precision back on."
        )
    return backend.dtype if torch.amp.is_autocast_available(backend.device.type) else None


# The stopping rule's fixed draws come from their own generator; an offset keeps them from
# repeating the first training draws, which come from `config.seed`.
_STOP_DRAWS_SEED_OFFSET = 7919


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
    save_on_stop: Callable[[], bool] | None = None
    """Asked when `should_stop` fires: True keeps the vectors reached so far (Stop & save, the
    WebUI's Skip, a first Ctrl-C), False or absent discards the run (Cancel, Interrupt)."""
    preview: Callable[[int, dict[str, Vectors]], None] | None = None
    preview_every: int = 0


@dataclass
class TrainResult:
    embeddings: dict[str, Vectors]  # trained word name -> vectors (CPU, float32)
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    rollbacks: int = 0
    stop_reason: StopReason = "max_steps"
    stop_detail: str = ""  # why, in words, when the stopping rule ended the run
    seconds: float = 0.0  # the loop: steps and the stopping rule's evaluations
    evaluation_seconds: float = 0.0  # the stopping rule's share of `seconds`
    evaluations: int = 0

    @property
    def interrupted(self) -> bool:
        return self.stop_reason == "interrupted"


ReportT = TypeVar("ReportT", bound="RunReport")


@dataclass(kw_only=True)
class RunReport:
    """What a finished run tells the user whatever it trained, so the CLI, the tab and the API
    show inversions and Perfusion concepts the same way. Keyword-only so each kind of run can add
    its own required fields."""

    text: str  # the init text
    sentence: str  # the init text with the trained words replaced by their names
    losses: list[float] = field(default_factory=list)
    steps: int = 0  # steps trained
    max_steps: int = 0  # the configured `steps`
    stop_reason: StopReason = "max_steps"
    stop_detail: str = ""
    seconds: float = 0.0
    evaluation_seconds: float = 0.0  # part of `seconds` spent by the stopping rule
    rollbacks: int = 0
    flip: FlipChoice | None = None  # whether the mirrored image was trained on, and why

    @classmethod
    def of_training(
        cls: type[ReportT], result: TrainResult, started: float, max_steps: int, **fields: Any
    ) -> ReportT:
        """The report of `result`, timed from `started` (a `time.perf_counter()` reading)."""
        return cls(
            losses=result.losses,
            steps=result.steps,
            max_steps=max_steps,
            stop_reason=result.stop_reason,
            stop_detail=result.stop_detail,
            seconds=time.perf_counter() - started,
            evaluation_seconds=result.evaluation_seconds,
            rollbacks=result.rollbacks,
            **fields,
        )

    def stop_summary(self) -> str:
        """One line for the user: how many steps ran and why no more."""
        if self.stop_reason == "converged":
            return f"stopped at step {self.steps} of at most {self.max_steps}: {self.stop_detail}"
        if self.stop_reason == "stopped":
            return (
                f"stopped at step {self.steps} of {self.max_steps} on request; saved what was learned so far"
            )
        return f"trained all {self.steps} steps"

    def _run_fields(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "sentence": self.sentence,
            "losses": self.losses,
            "steps": self.steps,
            "max_steps": self.max_steps,
            "stop_reason": self.stop_reason,
            "stop_detail": self.stop_detail,
            "seconds": round(self.seconds, 2),
            "evaluation_seconds": round(self.evaluation_seconds, 2),
            "rollbacks": self.rollbacks,
        } | ({"flip": self.flip.enabled, "flip_reason": self.flip.reason} if self.flip else {})


def stop_metadata(result: TrainResult, config: InvertConfig) -> dict[str, str]:
    """What a written file records about the length of its run: steps trained, the limit, and why."""
    return {
        "steps": str(result.steps),
        "max_steps": str(config.steps),
        "auto_stop": str(config.auto_stop).lower(),
        "stop_reason": result.stop_reason,
    }


@dataclass(frozen=True)
class Draws:
    """Fixed (x0, noise, t, prompt) draws to compare losses across steps or runs."""

    x0: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    prompts: list[str]


class Trainer:
    stopping_rule = PlateauRule()  # auto-stop's parameters; an override point for a kind of run

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
        self._amp_dtype = autocast_dtype(backend, config)
        self.scaler = torch.amp.GradScaler(backend.device.type, enabled=backend.dtype == torch.float16)
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
        if self._amp_dtype is None:
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

    def evaluate(self, draws: Draws) -> float:
        """The loss of the current vectors on `draws`, without gradients or touching training state."""
        return self._mean_loss(draws, lambda *draw: self._loss(*draw, training=False))

    def _frame_loss(self, draws: Draws) -> float:
        """The loss of the prompt's frame with no words in it ("a photo of a"): "no text" on `draws`."""
        frame = self.templates[0].format("").strip()

        def loss(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor:
            with self._autocast():
                cond = self.backend.conditioning([frame] * len(prompts), {})
                return diffusion_loss(self.backend, x0, noise, t, cond)

        return self._mean_loss(draws, loss)

    @torch.no_grad()
    def _mean_loss(
        self,
        draws: Draws,
        loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[str]], torch.Tensor],
    ) -> float:
        """`loss` over `draws` in chunks of four times the batch size (the stopping rule's 16 draws in
        one call at the default batch of 4). A forward pass without gradients holds one layer's
        activations at a time, a training step every layer's for its backward pass, so a chunk
        costs less memory than a step; chunking keeps evaluations with many draws within it."""
        size, total = 4 * self.config.batch_size, 0.0
        for start in range(0, len(draws.prompts), size):
            part = slice(start, start + size)
            chunk = draws.prompts[part]
            total += loss(draws.x0[part], draws.noise[part], draws.timesteps[part], chunk).item() * len(chunk)
        return total / len(draws.prompts)

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
            raise TrainingDivergedError(self._divergence_advice())
        self._restore_good()
        self.optimizer.state.clear()
        self.lr_scale *= 0.5
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self._lr_factor(self.scheduler.last_epoch)

    def _divergence_advice(self) -> str:
        advice = f"The loss stayed NaN/inf after {MAX_CONSECUTIVE_ROLLBACKS} rollbacks in a row. Lower the learning rate"
        if self.backend.dtype in HALF_DTYPES:
            dtype = str(self.backend.dtype).removeprefix("torch.")
            return (
                f"{advice}, or train in float32 (the model runs in {dtype}): {self.backend.float32_advice}."
            )
        return f"{advice}."

    def _plateau(self) -> Plateau | None:
        """The stopping rule's state on its fixed draws, or None when auto-stop is off or cannot act."""
        rule = self.stopping_rule.for_budget(self.config.steps)
        if not (self.config.auto_stop and rule.applies(self.config.steps)):
            return None
        draws = self.fixed_draws(rule.draws, self.config.seed + _STOP_DRAWS_SEED_OFFSET)
        return Plateau(rule, lambda: self.evaluate(draws), lambda: self._frame_loss(draws))

    def run(self, callbacks: Callbacks | None = None) -> TrainResult:
        """Train until `steps`, the stopping rule or `should_stop`, whichever comes first."""
        callbacks = callbacks or Callbacks()
        result = TrainResult(embeddings={})
        total = self.config.steps
        with self.session():
            start = time.perf_counter()
            plateau = self._plateau()
            for step in range(1, total + 1):
                if callbacks.should_stop and callbacks.should_stop():
                    keep = result.steps > 0 and callbacks.save_on_stop and callbacks.save_on_stop()
                    result.stop_reason = "stopped" if keep else "interrupted"
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
                if plateau and step < total and self._converged(plateau, step, result):
                    break
            result.seconds = time.perf_counter() - start
        result.embeddings = self.snapshot()
        result.rollbacks = self.rollbacks
        return result

    @staticmethod
    def _converged(plateau: Plateau, step: int, result: TrainResult) -> bool:
        """Ask the stopping rule at `step`, counting what its evaluations cost."""
        if not plateau.rule.due(step):
            return False
        started = time.perf_counter()
        converged = plateau.check(step)
        result.evaluation_seconds += time.perf_counter() - started
        result.evaluations = plateau.evaluations
        if converged:
            result.stop_reason, result.stop_detail = "converged", plateau.explain(step)
        return converged
