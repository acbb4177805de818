"""Auto-stop: the plateau rule, and a stopped run that is exactly the start of a longer one."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors import safe_open

from captinv.config import PerfusionOptions
from captinv.inversion import invert
from captinv.latents import build_latent_cache
from captinv.perfusion.rank1 import EMA_DECAY
from captinv.perfusion.training import PerfusionTrainer, plan_concept, text_covariance
from captinv.stopping import Plateau, PlateauRule
from captinv.trainer import Trainer
from tests.helpers import CAPTION, make_trainer, text_config

TEXT = "a tabby cat on a wooden table"
OPTIONS = PerfusionOptions(covariance_prompts=64)
RULE = PlateauRule(every=5, patience=20, min_improvement=0.05, min_steps=20)
# A rule that counts nothing as an improvement stops at its first chance, whatever the vectors do:
# the runs below learn at their normal rate and still stop at a known step.
NEVER_IMPROVES = PlateauRule(every=2, patience=4, min_improvement=1e9, min_steps=4)


def _stops_at(losses: dict[int, float], rule: PlateauRule = RULE) -> int | None:
    """Where a run with these fixed-draw losses at its evaluation steps stops ('no text' is 1.0)."""
    values = iter(losses[step] for step in sorted(losses))
    references = []
    plateau = Plateau(rule, lambda: next(values), lambda: references.append(1.0) or 1.0)
    stop = next((step for step in sorted(losses) if plateau.check(step)), None)
    assert references == [1.0], "the frame's loss is asked for once"
    assert plateau.evaluations == 1 + sum(1 for step in losses if stop is None or step <= stop)
    return stop


def test_a_flat_loss_stops_after_the_patience():
    assert _stops_at({step: 0.5 for step in range(5, 200, 5)}) == 25


def test_wobbles_smaller_than_the_threshold_are_not_progress():
    # span = no text - best = 0.5, so 'real' is 0.025: a 0.01 wobble is noise
    wobble = {step: 0.5 + (0.01 if step % 10 else -0.01) for step in range(5, 200, 5)}
    assert _stops_at(wobble) == 25


def test_a_steady_fall_never_stops_even_in_steps_below_the_threshold():
    # each evaluation is 0.02 lower, under 5 % of the span later on, but two of them add up to more
    falling = {step: 1.0 - 0.004 * step for step in range(5, 200, 5)}
    assert _stops_at(falling) is None


def test_a_late_drop_resets_the_patience():
    losses = {step: 0.9 if step < 15 else 0.3 for step in range(5, 200, 5)}
    assert _stops_at(losses) == 35


def test_the_earliest_stop_respects_min_steps_and_patience():
    assert RULE.first_possible_stop() == 25  # patience counts from the first evaluation, step 5
    assert dataclasses.replace(RULE, min_steps=40).first_possible_stop() == 40
    assert RULE.applies(26) and not RULE.applies(25)


def test_a_longer_budget_only_makes_the_rule_more_patient():
    default = PlateauRule()
    assert default.for_budget(100) == default  # the measured rule is the default budget's
    assert default.for_budget(50) == default
    long = default.for_budget(5000)
    assert (long.every, long.patience, long.min_improvement) == (50, 1000, default.min_improvement)
    assert long.first_possible_stop() == 1050


def test_a_stopped_run_is_exactly_the_start_of_a_fixed_run(sd1, chelsea, tmp_path, monkeypatch):
    """Evaluating the fixed draws takes nothing from the training stream: an auto-stopped run's
    vectors are bit for bit those of a run told to train that many steps."""
    monkeypatch.setattr(Trainer, "stopping_rule", NEVER_IMPROVES)
    auto = make_trainer(sd1, chelsea, tmp_path, steps=20, auto_stop=True).run()
    fixed = make_trainer(sd1, chelsea, tmp_path, steps=auto.steps, auto_stop=False).run()

    assert auto.stop_reason == "converged" and auto.steps == NEVER_IMPROVES.first_possible_stop()
    assert "fixed draws" in auto.stop_detail
    assert auto.evaluations == 1 + auto.steps // NEVER_IMPROVES.every  # the frame alone, then each check
    assert 0 < auto.evaluation_seconds < auto.seconds
    assert fixed.stop_reason == "max_steps" and fixed.evaluations == 0 and fixed.evaluation_seconds == 0
    assert auto.losses == fixed.losses
    for name, vectors in fixed.embeddings.items():
        assert torch.equal(vectors["emb_params"], auto.embeddings[name]["emb_params"])
    initial = make_trainer(sd1, chelsea, tmp_path).params["emb_params"]
    assert not torch.equal(torch.cat([v["emb_params"] for v in auto.embeddings.values()]), initial)


def test_no_evaluation_when_the_rule_could_not_stop_the_run_early(sd1, chelsea, tmp_path):
    short = make_trainer(sd1, chelsea, tmp_path, steps=Trainer.stopping_rule.first_possible_stop())
    result = short.run()
    assert short.config.auto_stop and result.evaluations == 0 and result.stop_reason == "max_steps"


def test_perfusion_evaluations_leave_i_star_and_the_values_alone(sd1, chelsea, monkeypatch):
    """An evaluation, even one before the first step, must not start or move i*: the run is bit
    for bit the run of a trainer that was never evaluated."""
    monkeypatch.setattr(PerfusionTrainer, "stopping_rule", NEVER_IMPROVES)
    covariance = text_covariance(sd1, OPTIONS, None).factor()
    latents = build_latent_cache(
        sd1, [chelsea], sd1.default_resolution, flip=True, random_crops=0, generator=torch.Generator()
    )
    config = text_config(text=TEXT, steps=20, auto_stop=True)

    def trainer(**overrides) -> PerfusionTrainer:
        plan = plan_concept(sd1, TEXT, "kitty", "cat")
        options = dataclasses.replace(config, **overrides)
        return PerfusionTrainer(sd1, plan, latents, options, OPTIONS, covariance)

    auto = trainer()
    with auto.session():
        auto.evaluate(auto.fixed_draws(4, seed=3))
    auto_result = auto.run()
    fixed = trainer(steps=auto_result.steps, auto_stop=False)
    fixed_result = fixed.run()

    assert (
        auto_result.stop_reason == "converged" and auto_result.steps == NEVER_IMPROVES.first_possible_stop()
    )
    assert torch.equal(auto.i_star, fixed.i_star)
    assert all(torch.equal(a, b) for a, b in zip(auto.edit.v_targets, fixed.edit.v_targets))
    for key, value in fixed_result.embeddings["kitty"].items():
        assert torch.equal(auto_result.embeddings["kitty"][key], value)


def test_perfusion_never_stops_while_i_star_still_mostly_remembers_its_start():
    """i* is a moving average that starts at the superclass's encoding; a concept saved while it is
    still mostly there would gate on every mention of the superclass."""
    earliest = PerfusionTrainer.stopping_rule.first_possible_stop()
    assert EMA_DECAY**earliest <= 0.1 < EMA_DECAY ** (earliest - 2 * PlateauRule().every)
    assert not PerfusionTrainer.stopping_rule.applies(100)  # a default-length run trains all its steps
    assert PerfusionTrainer.stopping_rule.for_budget(400).applies(400)


@pytest.mark.parametrize("auto_stop", [True, False])
def test_files_and_result_say_how_long_the_run_was_and_why(sd1, chelsea, tmp_path, monkeypatch, auto_stop):
    monkeypatch.setattr(Trainer, "stopping_rule", NEVER_IMPROVES)
    config = text_config(steps=12, auto_stop=auto_stop)
    result = invert(sd1, [chelsea], CAPTION, config, tmp_path, base="chelsea")

    expected = (NEVER_IMPROVES.first_possible_stop(), "converged") if auto_stop else (12, "max_steps")
    assert (result.steps, result.stop_reason, result.max_steps) == (*expected, 12)
    with safe_open(str(result.files[0]), "pt") as handle:
        metadata = handle.metadata()
    assert (metadata["steps"], metadata["max_steps"], metadata["stop_reason"]) == (
        str(expected[0]),
        "12",
        expected[1],
    )
    assert metadata["auto_stop"] == str(auto_stop).lower()
    if auto_stop:
        assert result.stop_summary().startswith(f"stopped at step {expected[0]} of at most 12: ")
    else:
        assert result.stop_summary() == "trained all 12 steps"
    assert result.to_dict()["stop_reason"] == expected[1]
