"""One training run: the skeleton caption inversion and Perfusion share.

check everything -> plan -> latents -> train -> write the set. Whatever can
fail without training is checked before the first step (the folder can be
written, the names are valid and free, the plan fits in a prompt), so a run
that would fail at the end fails at the start. Files are written only after
training, together and all or nothing (`captinv.files.write_set`), so an
interrupt, an error or a killed process leaves the folder as it was. A kind
of run supplies a `Recipe`: its plan, its trainer and its files.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from captinv import files, names
from captinv.backends.base import ModelBackend
from captinv.config import InvertConfig
from captinv.errors import Interrupted
from captinv.init_vectors import WordPlan
from captinv.latents import build_latent_cache, choose_flip
from captinv.trainer import Callbacks, Trainer, TrainResult, autocast_dtype

ExtraFiles = Callable[[WordPlan, TrainResult], Mapping[str, bytes]]
"""More files for the run's set, made from the plan and the trained vectors (e.g. card files)."""


class Recipe(ABC):
    """What one kind of run puts into the skeleton."""

    def __init__(self, config: InvertConfig) -> None:
        self.config = config

    @abstractmethod
    def plan(self, backend: ModelBackend) -> WordPlan:
        """The words, which of them train, and their names."""

    @abstractmethod
    def output_names(self, plan: WordPlan) -> list[str]:
        """The embedding names the run will write (checked to be free before training)."""

    @abstractmethod
    def trainer(self, backend: ModelBackend, plan: WordPlan, latents: torch.Tensor) -> Trainer:
        """The trainer of this kind of run, over the cached latents."""

    @abstractmethod
    def files(
        self, backend: ModelBackend, plan: WordPlan, trainer: Trainer, result: TrainResult
    ) -> dict[str, bytes]:
        """The run's files (file name -> bytes) from a finished training."""


@dataclass
class Outcome:
    plan: WordPlan
    result: TrainResult
    paths: list[Path]  # every file of the set, in the recipe's order, then the extra files
    started: float  # `time.perf_counter()` when the run began


def check_output(
    out_dir: Path,
    new_names: Iterable[str],
    *,
    overwrite: bool,
    host_names: Iterable[str] = (),
    tokenize: Callable[[str], list[int]] | None = None,
) -> None:
    """The folder can be written and `new_names` are safe and free there and for the host.

    Leftovers of a killed run are rolled back first, so they never block a name. Without
    `tokenize` (before a model loads) only identical names are checked.
    """
    out_dir = Path(out_dir)
    files.check_folder(out_dir)
    files.recover(out_dir)
    new_names = list(new_names)
    for name in new_names:
        names.output_path(out_dir, name, ".safetensors")
    existing = names.names_in_folder(out_dir) | set(host_names)
    names.check_available(new_names, existing, tokenize, overwrite=overwrite)


def checked_plan(backend: ModelBackend, recipe: Recipe, out_dir: Path) -> WordPlan:
    """The recipe's plan, once the model's precision suits the config and the plan's names are known
    to be free in `out_dir` and for the host."""
    autocast_dtype(backend, recipe.config)
    plan = recipe.plan(backend)
    check_output(
        out_dir,
        recipe.output_names(plan),
        overwrite=recipe.config.overwrite,
        host_names=backend.existing_names(),
        tokenize=backend.tokenize,
    )
    return plan


def run(
    backend: ModelBackend,
    images: list[Image.Image],
    recipe: Recipe,
    out_dir: Path,
    *,
    callbacks: Callbacks | None = None,
    extra_files: ExtraFiles | None = None,
) -> Outcome:
    """Check, plan, encode, train and write `recipe`'s set to `out_dir`.

    Extra files (cards) replace same-named files without `overwrite`: their names belong to
    embedding names that were checked to be free.
    """
    started = time.perf_counter()
    config, out_dir = recipe.config, Path(out_dir).resolve()
    plan = checked_plan(backend, recipe, out_dir)
    latents = build_latent_cache(
        backend,
        images,
        config.resolution or backend.default_resolution,
        flip=choose_flip(config.flip, plan.text).enabled,
        random_crops=config.random_crops,
        generator=torch.Generator().manual_seed(config.seed),
    )
    trainer = recipe.trainer(backend, plan, latents)
    result = trainer.run(callbacks)
    if result.interrupted:
        raise Interrupted(f"Stopped at step {result.steps} of {config.steps}; nothing was written.")
    outputs = recipe.files(backend, plan, trainer, result)
    extra = dict(extra_files(plan, result)) if extra_files is not None else {}
    paths = files.write_set(out_dir, outputs | extra, overwrite=config.overwrite, replaceable=extra.keys())
    return Outcome(plan, result, paths, started)
