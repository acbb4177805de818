"""When a run has learned what it will learn: the rule that ends training before `steps`.

The per-step training loss cannot tell: every step draws new noise and timesteps, and that
alone moves it by more than the whole effect of the text. The rule therefore watches the loss of
the current vectors on one fixed set of draws (the same latents, noise, timesteps and prompt at
every evaluation, no gradients), so two evaluations differ only by the vectors.

It is scale-free: improvements are measured against what text does for this image on these
draws, the loss of the prompt's frame with no words in it (e.g. "a photo of a") minus the best
loss so far. That span is small for a model whose loss the text hardly moves and large where it
matters, and it is the same normalisation as the convergence benchmark's (1 = no text, 0 = the
caption). A run stops when its best evaluation has not improved by at least `min_improvement` of
that span for `patience` steps; `steps` is the maximum. The defaults were measured for the default
budget of 100 steps; a longer budget (classic textual inversion's thousands of steps) stretches the
interval between evaluations and the patience with it, so the rule only gets more cautious. Why the
defaults are safe, and what they cost, is in docs/auto-stop.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

StopReason = Literal["converged", "max_steps", "stopped", "interrupted"]
"""Why a run ended: the stopping rule, the step limit, the user's Stop & save (the vectors so far
are written), or the user's Cancel / interrupt (nothing is written)."""


@dataclass(frozen=True)
class PlateauRule:
    """Parameters of the rule; `docs/auto-stop.md` has the measurements behind each default."""

    every: int = 10  # steps between evaluations
    draws: int = 16  # fixed (latent, noise, timestep) draws per evaluation
    patience: int = 20  # steps without a real improvement before stopping
    min_improvement: float = 0.1  # what counts as real: this share of the text's effect
    min_steps: int = 20  # never stop before this step

    def for_budget(self, max_steps: int) -> PlateauRule:
        """The rule for a run of at most `max_steps`: evaluations at least every 1 % of the budget
        (at most about a hundred of them) and a patience of at least 20 % of it."""
        return replace(
            self, every=max(self.every, max_steps // 100), patience=max(self.patience, max_steps // 5)
        )

    def applies(self, max_steps: int) -> bool:
        """Whether the rule could stop a run of `max_steps` early; if not, evaluating is waste."""
        return self.first_possible_stop() < max_steps

    def first_possible_stop(self) -> int:
        """The first evaluation counts as an improvement, so patience runs from step `every`."""
        earliest = max(self.min_steps, self.patience + self.every)
        return -(-earliest // self.every) * self.every

    def due(self, step: int) -> bool:
        return step % self.every == 0


@dataclass
class Plateau:
    """One run's state under a `PlateauRule`: the best evaluation so far and when it was reached.

    `evaluate` returns the loss of the current vectors on the fixed draws; `reference` the loss
    of the prompt's frame alone on the same draws, asked once, at the first check (the model is
    frozen, so it does not change; by then any state a kind of run sets up in its first training
    step, such as Perfusion's edit input, exists).
    """

    rule: PlateauRule
    evaluate: Callable[[], float]
    reference: Callable[[], float]
    no_text: float = math.nan
    best: float = math.inf
    best_step: int = 0
    evaluations: int = 0

    def check(self, step: int) -> bool:
        """Evaluate the current vectors at `step`; True when the run should stop here."""
        if math.isnan(self.no_text):
            self.no_text = self.reference()
            self.evaluations += 1
        self.evaluations += 1
        return self.observe(step, self.evaluate())

    def span(self) -> float:
        """What the text does on these draws: the frame alone minus the best loss so far (≥ 0)."""
        return max(self.no_text - self.best, 0.0) if math.isfinite(self.best) else 0.0

    def observe(self, step: int, loss: float) -> bool:
        """Record the evaluation at `step`; True when the run should stop here."""
        if loss < self.best - self.rule.min_improvement * self.span():
            self.best, self.best_step = loss, step
        return step >= self.rule.min_steps and step - self.best_step >= self.rule.patience

    def explain(self, step: int) -> str:
        return (
            f"the loss on {self.rule.draws} fixed draws last improved by {self.rule.min_improvement:.0%} of "
            f"the text's effect at step {self.best_step}, {step - self.best_step} steps before"
        )
