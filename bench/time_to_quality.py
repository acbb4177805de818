"""Time to a useful embedding: a fixed number of steps against auto-stop, a caption start against `*`.

    python -m bench.time_to_quality [--concepts 5] [--seeds 3] [--steps 100] [--jobs 2] \\
        [--json time-to-quality.json] [--png time-to-quality.png]
    python -m bench.time_to_quality --replot time-to-quality.json    # new table and plot, same runs

On held-out mini-world concepts (see bench.convergence), each (concept, seed, init) is inverted
twice from scratch in one process: once for exactly `--steps` steps, once with auto-stop (the
default; `--steps` is then its maximum). Both are timed as a user waits for them, set-up
(planning the words, encoding the image, building the trainer) apart from training (steps, plus
the stopping rule's evaluations, whose share is reported). Auto-stop never changes the steps it
takes, so its vectors must be bit for bit the fixed run's at the step where it stopped; the
benchmark checks that.

Quality is the convergence benchmark's reconstruction score: images generated from the learned
vectors alone, read back by the world's detector (colour, shape, size). The fixed run's vectors
are rated every `--checkpoint-every` steps, which also gives the steps and time a run needed to
reach its own final score. The fixed run's final vectors are rated a second time with other image
seeds: how far a score moves from sampling alone is the noise a difference is measured against.
A held-out loss (the convergence benchmark's normalised loss on 32 other fixed draws) shows what
the steps after the stop still buy in fit to the image.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.convergence.concepts import Concept, miniworld_concepts
from bench.convergence.measure import (
    BASE_NAME,
    Reference,
    Scorer,
    Settings,
    detector_score,
    draw_loss,
    latents_of,
    reference,
)
from bench.convergence.pool import map_concepts, worker_backend
from bench.convergence.report import COLOURS, Curve, Marker, draw_curves
from captinv.backends.base import ModelBackend, Vectors
from captinv.inversion import prepare
from captinv.latents import choose_flip
from captinv.trainer import Callbacks, Trainer, TrainResult

log = logging.getLogger("bench.time_to_quality")

MODES = ("caption", "star")
GOAL = 1 / 3  # auto-stop's wall time as a share of the fixed run's, at the same reconstruction


@dataclass
class Pair:
    """One (concept, seed, init): its fixed and its auto-stopped run."""

    concept: str
    mode: str
    seed: int
    init_text: str
    fixed_setup_seconds: float
    fixed_train_seconds: float
    fixed_cpu_seconds: float  # process CPU time of set-up and training: robust to other load
    auto_setup_seconds: float
    auto_train_seconds: float
    auto_cpu_seconds: float
    auto_evaluation_seconds: float
    auto_steps: int
    auto_stop_reason: str
    auto_is_fixed_prefix: bool  # the auto run's vectors equal the fixed run's at that step, bit for bit
    checkpoints: list[int]  # steps of the fixed run that were rated
    scores: list[float]  # reconstruction at `checkpoints`
    heldout: list[float]  # normalised held-out loss at `checkpoints`
    auto_score: float
    auto_heldout: float
    final_score_resampled: float  # the final vectors rated again with other image seeds
    steps: int = 0  # the fixed run's

    @property
    def fixed_seconds(self) -> float:
        return self.fixed_setup_seconds + self.fixed_train_seconds

    @property
    def auto_seconds(self) -> float:
        return self.auto_setup_seconds + self.auto_train_seconds

    def steps_to_final_score(self) -> int:
        """First rated step of the fixed run whose score is at least its final one."""
        return next(step for step, score in zip(self.checkpoints, self.scores) if score >= self.scores[-1])

    def seconds_to_final_score(self) -> float:
        """Set-up plus that many of the fixed run's (mean) steps."""
        return self.fixed_setup_seconds + self.fixed_train_seconds * self.steps_to_final_score() / self.steps


@dataclass
class _Timed:
    result: TrainResult
    setup_seconds: float
    prompt: str
    cpu_seconds: float = 0.0
    snapshots: dict[int, dict[str, Vectors]] = field(default_factory=dict)


def _invert(
    backend: ModelBackend,
    concept: Concept,
    mode: str,
    seed: int,
    settings: Settings,
    *,
    auto_stop: bool,
    keep_every: int = 0,
) -> _Timed:
    """One inversion from nothing but the loaded model, set-up and training timed apart."""
    started, cpu = time.perf_counter(), time.process_time()
    config = settings.config(concept.inits[mode], seed, auto_stop=auto_stop)
    with tempfile.TemporaryDirectory() as tmp:
        plan = prepare(backend, config.text or "", BASE_NAME, config, Path(tmp))
    flip = choose_flip(config.flip, config.text or "").enabled
    trainer = Trainer(backend, plan, latents_of(backend, concept, flip), config)
    timed = _Timed(
        TrainResult({}), time.perf_counter() - started, trainer.templates[0].format(plan.sentence())
    )
    timed.snapshots[0] = trainer.snapshot()

    def keep(step: int, vectors: dict[str, Vectors]) -> None:
        timed.snapshots[step] = vectors

    timed.result = trainer.run(Callbacks(preview=keep, preview_every=keep_every))
    timed.cpu_seconds = time.process_time() - cpu
    timed.snapshots[timed.result.steps] = timed.result.embeddings
    return timed


@dataclass
class AutoRun:
    """An auto-stopped run alone, rated as bench.convergence rates its runs (`Run.scores`)."""

    concept: str
    mode: str
    seed: int
    steps: int
    stop_reason: str
    score: float


def measure_auto_stop(
    concept: Concept, seeds: list[int], modes: list[str], settings: Settings
) -> list[AutoRun]:
    """Auto-stopped runs of one concept. Auto-stop takes the very steps of a fixed run, so these
    compare with bench.convergence's runs of the same settings, concept, mode and seed."""
    from bench.miniworld.world import detect

    backend = worker_backend()
    score = detector_score(backend, concept, settings, detect)
    runs = []
    for seed in seeds:
        for mode in modes:
            auto = _invert(backend, concept, mode, seed, settings, auto_stop=True)
            runs.append(
                AutoRun(
                    concept.name,
                    mode,
                    seed,
                    auto.result.steps,
                    auto.result.stop_reason,
                    score(auto.prompt, auto.result.embeddings),
                )
            )
    return runs


def _identical(first: dict[str, Vectors], second: dict[str, Vectors]) -> bool:
    return first.keys() == second.keys() and all(
        torch.equal(first[name][key], second[name][key]) for name in first for key in first[name]
    )


def measure_concept(concept: Concept, seeds: list[int], settings: Settings, every: int) -> list[Pair]:
    """Both runs of every init and seed of one concept, in the worker's loaded model."""
    from bench.miniworld.world import detect

    backend = worker_backend()
    scorers = (
        detector_score(backend, concept, settings, detect),
        detector_score(backend, concept, settings, detect, first_seed=settings.images),
    )
    latents = latents_of(backend, concept, flip=False)  # evaluation draws: the image as it is
    pairs = []
    for seed in seeds:
        ref = reference(backend, concept, latents, settings, seed)
        for mode in MODES:
            pair = measure_pair(backend, concept, mode, seed, settings, every, ref, scorers)
            log.info(
                "%s %s seed %d: fixed %d steps %.1f s score %.2f | auto %d steps %.1f s score %.2f (%s)",
                concept.name, mode, seed, pair.steps, pair.fixed_seconds, pair.scores[-1],
                pair.auto_steps, pair.auto_seconds, pair.auto_score, pair.auto_stop_reason,
            )  # fmt: skip
            pairs.append(pair)
    return pairs


def measure_pair(
    backend: ModelBackend,
    concept: Concept,
    mode: str,
    seed: int,
    settings: Settings,
    every: int,
    ref: Reference,
    scorers: tuple[Scorer, Scorer],
) -> Pair:
    """The fixed and the auto-stopped run of one init and seed, timed, rated and compared."""
    score, resample = scorers
    fixed = _invert(backend, concept, mode, seed, settings, auto_stop=False, keep_every=every)
    auto = _invert(backend, concept, mode, seed, settings, auto_stop=True)
    checkpoints = sorted(fixed.snapshots)
    scores = {step: score(fixed.prompt, fixed.snapshots[step]) for step in checkpoints}
    same = _identical(auto.result.embeddings, fixed.snapshots.get(auto.result.steps, {}))

    def heldout(vectors: dict[str, Vectors]) -> float:
        return ref.normalise(draw_loss(backend, ref.draws, fixed.prompt, vectors))

    return Pair(
        concept=concept.name,
        mode=mode,
        seed=seed,
        init_text=concept.inits[mode],
        fixed_setup_seconds=fixed.setup_seconds,
        fixed_train_seconds=fixed.result.seconds,
        fixed_cpu_seconds=fixed.cpu_seconds,
        auto_setup_seconds=auto.setup_seconds,
        auto_train_seconds=auto.result.seconds,
        auto_cpu_seconds=auto.cpu_seconds,
        auto_evaluation_seconds=auto.result.evaluation_seconds,
        auto_steps=auto.result.steps,
        auto_stop_reason=auto.result.stop_reason,
        auto_is_fixed_prefix=same,
        checkpoints=checkpoints,
        scores=[scores[step] for step in checkpoints],
        heldout=[heldout(fixed.snapshots[step]) for step in checkpoints],
        auto_score=scores[auto.result.steps] if same else score(auto.prompt, auto.result.embeddings),
        auto_heldout=heldout(auto.result.embeddings),
        final_score_resampled=resample(fixed.prompt, fixed.result.embeddings),
        steps=fixed.result.steps,
    )


def _mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % interval (normal approximation)."""
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, half


def summarise(pairs: list[Pair]) -> dict:
    """Per init: steps, seconds and scores of both runs, their ratios, and the score noise."""
    summary: dict = {}
    for mode in dict.fromkeys(pair.mode for pair in pairs):
        mine = [pair for pair in pairs if pair.mode == mode]
        delta, delta_ci = _mean_ci([p.auto_score - p.scores[-1] for p in mine])
        noise = [p.final_score_resampled - p.scores[-1] for p in mine]
        scores = np.array([p.scores for p in mine])
        summary[mode] = {
            "runs": len(mine),
            "fixed_steps": mine[0].steps,
            "fixed_seconds_median": round(statistics.median(p.fixed_seconds for p in mine), 2),
            "setup_seconds_median": round(statistics.median(p.fixed_setup_seconds for p in mine), 3),
            "fixed_score_mean": round(statistics.fmean(p.scores[-1] for p in mine), 4),
            "auto_steps": [p.auto_steps for p in mine],
            "auto_steps_median": statistics.median(p.auto_steps for p in mine),
            "auto_converged_fraction": sum(p.auto_stop_reason == "converged" for p in mine) / len(mine),
            "auto_seconds_median": round(statistics.median(p.auto_seconds for p in mine), 2),
            "auto_evaluation_share": round(
                sum(p.auto_evaluation_seconds for p in mine) / sum(p.auto_train_seconds for p in mine), 4
            ),
            "auto_score_mean": round(statistics.fmean(p.auto_score for p in mine), 4),
            "auto_minus_fixed_score": {"mean": round(delta, 4), "ci95": round(delta_ci, 4)},
            "score_resampling_sd": round(statistics.stdev(noise) if len(noise) > 1 else math.nan, 4),
            "wall_ratio_median": round(statistics.median(p.auto_seconds / p.fixed_seconds for p in mine), 4),
            "cpu_ratio_median": round(
                statistics.median(p.auto_cpu_seconds / p.fixed_cpu_seconds for p in mine), 4
            ),
            "auto_is_fixed_prefix": all(p.auto_is_fixed_prefix for p in mine),
            "steps_to_final_score": [p.steps_to_final_score() for p in mine],
            "steps_to_final_score_median": statistics.median(p.steps_to_final_score() for p in mine),
            "seconds_to_final_score_ratio_median": round(
                statistics.median(p.seconds_to_final_score() / p.fixed_seconds for p in mine), 4
            ),
            "heldout_fixed_mean": round(statistics.fmean(p.heldout[-1] for p in mine), 4),
            "heldout_auto_mean": round(statistics.fmean(p.auto_heldout for p in mine), 4),
            "checkpoints": mine[0].checkpoints,
            "score_mean": scores.mean(0).round(4).tolist(),
            "score_q25": np.quantile(scores, 0.25, axis=0).round(4).tolist(),
            "score_q75": np.quantile(scores, 0.75, axis=0).round(4).tolist(),
        }
    return summary


def plot(summary: dict, title: str) -> Image.Image:
    """Reconstruction of the fixed runs against steps, with where auto-stop ended and what it scored."""
    curves = [
        Curve(
            f"{mode}, fixed", COLOURS[mode], v["checkpoints"], v["score_mean"], v["score_q25"], v["score_q75"]
        )
        for mode, v in summary.items()
    ]
    markers = [
        Marker(f"{mode} auto-stop", COLOURS[mode], v["auto_steps_median"], v["auto_score_mean"])
        for mode, v in summary.items()
    ]
    return draw_curves(
        curves,
        title=title,
        y_label="reconstruction: share of colour, shape and size read back (mean, interquartile band)",
        y_range=(0.0, 1.05),
        markers=markers,
    )


def table(summary: dict) -> str:
    """The Markdown table of the README and docs: per init, the fixed run, auto-stop, and the first
    rated step of the fixed run that already had its final score (known only afterwards)."""
    rows = [
        "| init | run | steps: median (range) | wall s (median) | ÷ fixed run, wall (CPU time) "
        "| rule's share of training | reconstruction (mean) | − fixed run's (mean, 95 % CI) | held-out loss (mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def steps(values: list[int]) -> str:
        return f"{statistics.median(values):g} ({min(values)}–{max(values)})"

    for mode, v in summary.items():
        delta = v["auto_minus_fixed_score"]
        rows += [
            f"| `{mode}` | fixed | {v['fixed_steps']} | {v['fixed_seconds_median']:.1f} | 1 | – "
            f"| {v['fixed_score_mean']:.2f} | – | {v['heldout_fixed_mean']:.2f} |",
            f"| `{mode}` | auto-stop | {steps(v['auto_steps'])} | {v['auto_seconds_median']:.1f} "
            f"| **{v['wall_ratio_median']:.2f}** ({v['cpu_ratio_median']:.2f}) | {v['auto_evaluation_share']:.0%} "
            f"| {v['auto_score_mean']:.2f} | {delta['mean']:+.3f} ± {delta['ci95']:.3f} "
            f"| {v['heldout_auto_mean']:.2f} |",
            f"| `{mode}` | fixed run's final score first reached | {steps(v['steps_to_final_score'])} | – "
            f"| {v['seconds_to_final_score_ratio_median']:.2f} | – | – | – | – |",
        ]
    setup = ", ".join(f"{mode} {v['setup_seconds_median']:.2f} s" for mode, v in summary.items())
    noise = ", ".join(f"{mode} {v['score_resampling_sd']:.3f}" for mode, v in summary.items())
    return "\n".join(
        [
            *rows,
            "",
            f"Set-up before step 1 (median, included in wall time): {setup}. "
            f"A score's spread from image sampling alone (SD of re-rating the same vectors): {noise}.",
        ]
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.time_to_quality", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--concepts", type=int, default=5, help="held-out mini-world concepts")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="the fixed run's steps, auto-stop's maximum")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="rate the fixed run every N steps")
    parser.add_argument("--images", type=int, default=8, help="generated images per rating")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes (CPU), one thread each; each loads the model"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=Path("time-to-quality.json"))
    parser.add_argument("--png", type=Path, default=Path("time-to-quality.png"))
    parser.add_argument("--replot", type=Path, help="re-summarise the pairs of an earlier --json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.replot:
        earlier = json.loads(args.replot.read_text(encoding="utf-8"))
        return report(args, [Pair(**pair) for pair in earlier["pairs"]], earlier)
    settings = Settings(
        steps=args.steps, images=args.images, sample_steps=args.sample_steps, eval_draws=32, score_at=()
    )
    concepts = miniworld_concepts(args.concepts)
    pairs = map_concepts(
        "miniworld", measure_concept, concepts, list(range(args.seeds)), settings, args.checkpoint_every,
        jobs=args.jobs, device=args.device, threads=1,
    )  # fmt: skip
    run = {
        "model": "miniworld",
        "concepts": [c.name for c in concepts],
        "seeds": args.seeds,
        "settings": asdict(settings),
        "cpu_count": os.cpu_count(),
        "jobs": args.jobs,
    }
    return report(args, pairs, run)


def report(args: argparse.Namespace, pairs: list[Pair], run: dict) -> dict:
    """Write the JSON and the plot, print the table."""
    summary = summarise(pairs)
    result = {key: run[key] for key in ("model", "concepts", "seeds", "settings", "cpu_count", "jobs")}
    result |= {"goal_wall_ratio": GOAL, "summary": summary, "pairs": [asdict(pair) for pair in pairs]}
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    steps = run["settings"]["steps"]
    title = (
        f"miniworld: {len(run['concepts'])} concepts x {run['seeds']} seeds, fixed {steps} steps vs auto-stop"
    )
    plot(summary, title).save(args.png)
    print(table(summary))
    return result


if __name__ == "__main__":
    main()
