"""Perfusion benchmarks, each measured in one run (absolute seconds mean little across machines).

    python -m bench.perfusion gate [--steps 300] [--batch 4] [--targets 2]   # covariances compared
    python -m bench.perfusion steps [--batches 4 8] [--targets 2]             # steps x draws -> defaults
    python -m bench.perfusion convergence                                      # prompts C needs
    python -m bench.perfusion [--threads 2] covariance                         # old path vs new, CLIP-L size
    ... [--json out.json]

gate/steps/convergence run on the packaged mini world (`bench.perfusion.miniworld`); covariance on
a random-weight model of SD1.5's text encoder (`bench.perfusion.covariance_speed`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from pathlib import Path

import torch

from bench.perfusion import miniworld as mw
from captinv.config import PerfusionOptions
from captinv.perfusion.covariance import estimate_covariance
from captinv.perfusion.textpath import covariance_corpus

log = logging.getLogger("bench.perfusion")
BETAS = (0.4, 0.5, 0.6, 0.7, 0.75)


def _backend():
    from captinv.backends.diffusers_backend import DiffusersBackend

    return DiffusersBackend.load("miniworld", device="cpu")


def _row(label: str, concept, target, backend) -> dict:
    found = mw.selectivities(backend, concept)
    row = {"label": label, "reconstruction": mw.reconstruction(backend, concept, target)}
    row |= {
        f"{kind}.{k}": v
        for kind, s in found.items()
        for k, v in s.to_dict().items()
        if k not in ("beta", "tau")
    }
    log.info("%s %s/%s: %s | in-domain %s | generic %s", label, target.colour, target.shape,
             f"reconstruction {row['reconstruction']:.2f}", found["in-domain"], found["generic"])  # fmt: skip
    return row


def gate(args) -> dict:
    """Every covariance of `miniworld.covariances`, one concept each per target: the gate and the images."""
    backend = _backend()
    found = mw.covariances(backend)
    out: dict = {
        "covariances": {
            k: {"prompts": c.prompts, "tokens": c.count, "converged": c.converged} for k, c in found.items()
        }
    }
    rows, betas = [], []
    for colour, shape in mw.TARGETS[: args.targets]:
        target = mw.Target(colour, shape)
        for label, covariance in found.items():
            concept = mw.train(backend, target, covariance, steps=args.steps, batch=args.batch)[args.steps]
            rows.append(_row(label, concept, target, backend) | {"target": f"{colour} {shape}"})
            if label.startswith("default ("):
                for beta in BETAS:
                    s = mw.selectivities(backend, concept, beta=beta)["in-domain"]
                    betas.append({"target": f"{colour} {shape}", "beta": beta, "leak_at_s0": _sigmoid(-beta / 0.15)}
                                 | {k: v for k, v in s.to_dict().items() if k not in ("beta", "tau")})  # fmt: skip
    out["rows"], out["betas"] = rows, betas
    _print_table(rows, ("label", "target", "reconstruction", "in-domain.off_concept_open", "in-domain.padding_open",
                        "in-domain.superclass_gate", "in-domain.concept_gate", "generic.off_concept_open"))  # fmt: skip
    _print_table(
        betas,
        (
            "beta",
            "target",
            "leak_at_s0",
            "off_concept_open",
            "padding_open",
            "superclass_gate",
            "concept_gate",
        ),
    )
    return out


def steps(args) -> dict:
    """Gate and reconstruction at several step counts, for each batch size (default covariance)."""
    backend = _backend()
    from captinv.perfusion.textpath import text_covariance

    covariance = text_covariance(backend, PerfusionOptions(), None)
    checkpoints = tuple(args.checkpoints)
    rows = []
    for colour, shape in mw.TARGETS[: args.targets]:
        target = mw.Target(colour, shape)
        for batch in args.batches:
            concepts = mw.train(
                backend, target, covariance, steps=max(checkpoints), batch=batch, checkpoints=checkpoints
            )
            for step, concept in sorted(concepts.items()):
                rows.append(
                    _row(f"{step} x {batch}", concept, target, backend)
                    | {"target": f"{colour} {shape}", "steps": step, "batch": batch}
                )
    _print_table(rows, ("label", "target", "reconstruction", "in-domain.off_concept_open", "in-domain.superclass_gate",
                        "in-domain.concept_gate", "generic.off_concept_open"))  # fmt: skip
    return {"rows": rows}


def convergence(args) -> dict:
    """How the estimate's change and a trained concept's gate settle as C sees more prompts."""
    backend = _backend()
    corpus = covariance_corpus(PerfusionOptions())
    trace: list = []
    full = estimate_covariance(
        backend.text_encodings, corpus, max_prompts=args.max_prompts, tolerance=0.0,
        progress=lambda p: trace.append((p.prompts, p.change)),
    )  # fmt: skip
    target = mw.Target(*mw.TARGETS[0])
    concept = mw.train(backend, target, full, steps=args.steps, batch=4)[args.steps]
    rows = []
    for count in args.counts:
        partial = estimate_covariance(backend.text_encodings, corpus, max_prompts=count, tolerance=0.0)
        solved = torch.cholesky_solve(concept.i_star.double()[:, None], partial.factor())[:, 0].float()
        probe = dataclasses.replace(concept, c_inv_i_star=solved)
        s = mw.selectivities(backend, probe)["in-domain"]
        change = next((c for n, c in trace if n >= count and c is not None), None)
        rows.append({"prompts": count, "change": change} | s.to_dict())
    _print_table(
        rows, ("prompts", "change", "off_concept_open", "padding_open", "superclass_gate", "concept_gate")
    )
    speed = [{"prompts": n, "change": c} for n, c in trace if c is not None]
    return {"rows": rows, "trace": speed}


def covariance(args) -> dict:
    from bench.perfusion.covariance_speed import measure

    result = measure(sample=args.old_sample, threads=args.threads)
    print(result)
    return dataclasses.asdict(result) | {"ratio": result.ratio}


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _print_table(rows: list[dict], columns) -> None:
    print(" | ".join(columns))
    for row in rows:
        print(
            " | ".join(
                f"{row.get(c):.3f}" if isinstance(row.get(c), float) else str(row.get(c)) for c in columns
            )
        )
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.perfusion")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=None)
    commands = parser.add_subparsers(dest="command", required=True)
    g = commands.add_parser("gate")
    g.add_argument("--steps", type=int, default=300)
    g.add_argument("--batch", type=int, default=4)
    g.add_argument("--targets", type=int, default=2)
    s = commands.add_parser("steps")
    s.add_argument("--batches", type=int, nargs="+", default=[4, 8])
    s.add_argument("--checkpoints", type=int, nargs="+", default=[50, 100, 200, 300, 400])
    s.add_argument("--targets", type=int, default=2)
    c = commands.add_parser("convergence")
    c.add_argument("--max-prompts", type=int, default=16000)
    c.add_argument("--counts", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192, 16000])
    c.add_argument("--steps", type=int, default=200)
    v = commands.add_parser("covariance")
    v.add_argument("--old-sample", type=int, default=256)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads and args.command != "covariance":
        torch.set_num_threads(args.threads)
    result = {"gate": gate, "steps": steps, "convergence": convergence, "covariance": covariance}[
        args.command
    ](args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
