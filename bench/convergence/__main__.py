"""Convergence of each initialisation mode, measured in one run: JSON numbers and a PNG plot.

    python -m bench.convergence [--concepts 6] [--seeds 3] [--steps 200] [--jobs 2]
    python -m bench.convergence --model ./sd15 --images a.png b.png \\
        --captions "a red vintage bicycle" "a tabby cat on a sofa" [--words bicycle cat] [--templates object]

With the default `--model miniworld` the concepts are held-out colour+shape pairs of the mini
world (one image each), every mode is run, and images generated from the learned vectors are
scored by the world's detector. With another model, your images and captions are the concepts;
`--noisy`, `--labels` and `--words` add those modes; there is no detector, so no score.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path

from bench.convergence.concepts import MODES, Concept, miniworld_concepts, user_concepts
from bench.convergence.measure import Run, Settings, detector_score, invert_curve, latents_of, reference
from bench.convergence.pool import map_concepts, worker_backend
from bench.convergence.report import plot, summarise
from captinv.latents import choose_flip

log = logging.getLogger("bench.convergence")

THRESHOLD = -0.1  # normalised loss: a tenth of the no-text-to-caption gap better than the plain caption


def measure_concept(concept: Concept, seeds: list[int], modes: list[str], settings: Settings) -> list[Run]:
    """Every mode and seed of one concept, in the worker's loaded model."""
    backend = worker_backend()
    latents = {flip: latents_of(backend, concept, flip) for flip in (False, True)}
    score = None
    if concept.truth is not None:
        from bench.miniworld.world import detect

        score = detector_score(backend, concept, settings, detect)
    runs = []
    for seed in seeds:
        ref = reference(backend, concept, latents[False], settings, seed)
        for mode in (m for m in modes if m in concept.inits):
            flip = choose_flip(settings.config(concept.inits[mode], seed).flip, concept.inits[mode]).enabled
            run = invert_curve(backend, concept, mode, seed, settings, latents[flip], ref, score)
            log.info(
                "%s %s seed %d: loss %.3f -> %.3f (normalised %.2f -> %.2f) score %s, %.0f s",
                concept.name, mode, seed, run.loss[0], run.loss[-1], run.gap[0], run.gap[-1],
                run.scores, run.seconds,
            )  # fmt: skip
            runs.append(run)
    return runs


def run_all(
    model: str,
    concepts: list[Concept],
    seeds: list[int],
    modes: list[str],
    settings: Settings,
    *,
    jobs: int = 1,
    device: str | None = None,
) -> list[Run]:
    """Concepts are spread over `jobs` processes (one thread each), each with its own model copy."""
    return map_concepts(model, measure_concept, concepts, seeds, modes, settings, jobs=jobs, device=device)


def _parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m bench.convergence", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="miniworld", help="'miniworld' (default) or any --model of captinv"
    )
    parser.add_argument("--images", nargs="*", default=[], help="your images (with --model)")
    parser.add_argument("--captions", nargs="*", default=[], help="one reference caption per image")
    parser.add_argument("--noisy", nargs="*", help="a flawed caption per image (mode noisy-caption)")
    parser.add_argument("--labels", nargs="*", help="a classifier's label per image (mode classify)")
    parser.add_argument("--words", nargs="*", help="one class word per image (mode word)")
    parser.add_argument("--concepts", type=int, default=6, help="mini world: how many held-out concepts")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--templates", choices=("none", "object", "style"), help="default: none for the mini world"
    )
    parser.add_argument(
        "--flip",
        choices=("auto", "on", "off"),
        default=defaults.flip,
        help="train on the mirrored image too (auto: captinv's rule, off when the init text names a side)",
    )
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument(
        "--eval-draws", type=int, default=defaults.eval_draws, help="fixed draws per evaluation"
    )
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="normalised loss to reach")
    parser.add_argument(
        "--replot", type=Path, help="re-summarise the runs of an earlier --json (e.g. at another --threshold)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="processes (CPU); each loads the model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=Path("convergence.json"))
    parser.add_argument("--png", type=Path, default=Path("convergence.png"))
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    miniworld = args.model == "miniworld"
    concepts = miniworld_concepts(args.concepts) if miniworld else user_concepts(
        args.images, args.captions, args.noisy, args.labels, args.words
    )  # fmt: skip
    settings = replace(
        Settings(),
        steps=args.steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        templates=args.templates or ("none" if miniworld else "object"),
        flip=args.flip,
        eval_every=args.eval_every,
        eval_draws=args.eval_draws,
    )
    if args.replot:
        earlier = json.loads(args.replot.read_text(encoding="utf-8"))
        runs = load_runs(earlier)
        return report(args, runs, earlier["concepts"], earlier["seeds"], Settings(**earlier["settings"]))
    runs = run_all(
        args.model,
        concepts,
        list(range(args.seeds)),
        args.modes,
        settings,
        jobs=args.jobs,
        device=args.device,
    )
    return report(args, runs, [c.name for c in concepts], args.seeds, settings)


def load_runs(earlier: dict) -> list[Run]:
    """The runs of an earlier report (JSON keys are strings; score steps are ints)."""
    return [
        Run(**(run | {"scores": {int(k): v for k, v in run["scores"].items()}})) for run in earlier["runs"]
    ]


def report(
    args: argparse.Namespace, runs: list[Run], concepts: list[str], seeds: int, settings: Settings
) -> dict:
    """Write the JSON and the plot, print one line per mode."""
    summary = summarise(runs, args.threshold)
    result = {
        "model": args.model,
        "concepts": concepts,
        "seeds": seeds,
        "threshold": args.threshold,
        "settings": asdict(settings),
        "cpu_count": os.cpu_count(),
        "summary": summary,
        "runs": [asdict(run) for run in runs],
    }
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    title = f"{args.model}: {len(concepts)} concepts x {seeds} seeds, lr {settings.learning_rate}"
    plot(summary, args.threshold, title).save(args.png)
    for mode, values in summary.items():
        scores = ", ".join(f"step {k}: {v['median']:.2f}" for k, v in values["score"].items())
        print(
            f"{mode:14s} steps to {args.threshold}: median {values['median_steps_to_threshold']} "
            f"(reached {values['reached_fraction']:.0%}), speed-up vs *: {values['speedup_vs_star']}, "
            f"final normalised loss {values['gap_mean'][-1]:.2f}, reconstruction {scores or '-'}"
        )
    return result


if __name__ == "__main__":
    main()
