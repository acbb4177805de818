"""One caption inversion from start to finish: text -> plan -> latents -> training -> files.

This is the public entry point the CLI, the WebUI tab and the API share; it is
the `captinv.runs` skeleton with the caption-inversion recipe. Names are
checked before any training so a taken name fails in a second, not after ten
minutes; files are written only when training finished, all at once (an
interrupt writes nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from captinv import __version__, names, runs
from captinv.backends.base import ModelBackend
from captinv.config import InvertConfig
from captinv.continuing import check_text, read_set, start_from_stored
from captinv.embedding_io import EmbeddingFile
from captinv.init_vectors import WordPlan, plan_words, planned_names
from captinv.latents import choose_flip
from captinv.trainer import Callbacks, RunReport, Trainer, TrainResult, stop_metadata


@dataclass(kw_only=True)
class InvertResult(RunReport):
    base: str
    combined_name: str
    word_names: list[str]
    trained_words: list[str]  # the caption word each of `word_names` stands for
    files: list[Path]

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "combined_name": self.combined_name,
            "word_names": self.word_names,
            "files": [path.name for path in self.files],
        } | self._run_fields()


def default_base(config: InvertConfig, first_image: str | Path | None) -> str:
    """The user's name, else the first image's file stem, made safe."""
    if config.name:
        return names.base_name(config.name)
    if first_image is not None:
        return names.base_name(Path(first_image).stem)
    return "captinv"


def check_inputs(text: str, base: str, config: InvertConfig, out_dir: Path) -> list[str]:
    """Everything about an inversion that can be checked before a model loads: the init text
    gives words, the folder can be written, the names are safe and free. Returns the names."""
    if config.start_from:
        check_text(read_set(config.start_from), text)
    planned = planned_names(text, base, config)
    runs.check_output(out_dir, planned, overwrite=config.overwrite)
    return planned


def prepare(backend: ModelBackend, text: str, base: str, config: InvertConfig, out_dir: Path) -> WordPlan:
    """Plan the pseudo-words and check their names and precision before anything expensive runs."""
    return runs.checked_plan(backend, _Inversion(text, base, config), Path(out_dir))


def _metadata(
    plan: WordPlan, backend: ModelBackend, config: InvertConfig, result: TrainResult, name: str
) -> dict[str, str]:
    return {
        "format": "captinv",
        "captinv_version": __version__,
        "name": name,
        "caption": plan.text,
        "words": json.dumps([word.text for word in plan.words]),
        "sentence": plan.sentence(),
        "init": config.init,
        "vectors_per_word": str(config.vectors_per_word or "none"),
        "train_function_words": json.dumps(config.train_function_words),
        **({"continued_from": Path(config.start_from).name} if config.start_from else {}),
        **stop_metadata(result, config),
        "learning_rate": str(config.learning_rate),
        "seed": str(config.seed),
        "base_model": backend.model_name,
        "model_family": backend.family,
    } | backend.run_metadata()


def output_files(
    plan: WordPlan,
    result: TrainResult,
    backend: ModelBackend,
    config: InvertConfig,
) -> list[EmbeddingFile]:
    """The combined embedding (every word in order, fixed words at their token rows) and one per trained word."""
    trained = result.embeddings
    pieces = [trained[w.name] if w.trainable else w.init for w in plan.words]
    combined = {enc.key: torch.cat([piece[enc.key] for piece in pieces]) for enc in backend.encoders}
    files = [
        EmbeddingFile(
            Path(f"{plan.combined_name}.safetensors"),
            combined,
            _metadata(plan, backend, config, result, plan.combined_name),
        )
    ]
    for word in plan.trainable:
        metadata = _metadata(plan, backend, config, result, word.name) | {"word": word.text}
        files.append(EmbeddingFile(Path(f"{word.name}.safetensors"), trained[word.name], metadata))
    return files


class _Inversion(runs.Recipe):
    """Caption inversion: a pseudo-word per word of the text, a file per word plus the combined one."""

    def __init__(self, text: str, base: str, config: InvertConfig) -> None:
        self.stored = read_set(config.start_from) if config.start_from else None
        if self.stored is not None:  # a second round: the words are planned as in the first
            check_text(self.stored, text)
            config = self.stored.planned_like(config)
        super().__init__(config)
        self.text, self.base = text, base

    def plan(self, backend: ModelBackend) -> WordPlan:
        plan = plan_words(backend, self.text, self.base, self.config)
        return plan if self.stored is None else start_from_stored(plan, self.stored, backend)

    def output_names(self, plan: WordPlan) -> list[str]:
        return plan.output_names()

    def trainer(self, backend: ModelBackend, plan: WordPlan, latents: torch.Tensor) -> Trainer:
        return Trainer(backend, plan, latents, self.config)

    def files(
        self, backend: ModelBackend, plan: WordPlan, trainer: Trainer, result: TrainResult
    ) -> dict[str, bytes]:
        made = output_files(plan, result, backend, self.config)
        return {item.path.name: item.to_bytes() for item in made}


def invert(
    backend: ModelBackend,
    images: list[Image.Image],
    text: str,
    config: InvertConfig,
    out_dir: Path,
    *,
    base: str,
    callbacks: Callbacks | None = None,
    extra_files: runs.ExtraFiles | None = None,
) -> InvertResult:
    """Train pseudo-words for `text` on `images` and write their files (and `extra_files`, e.g.
    card files) to `out_dir`, all together or none."""
    done = runs.run(
        backend, images, _Inversion(text, base, config), out_dir, callbacks=callbacks, extra_files=extra_files
    )
    plan = done.plan
    return InvertResult.of_training(
        done.result,
        done.started,
        config.steps,
        base=plan.base,
        combined_name=plan.combined_name,
        word_names=[w.name for w in plan.trainable],
        trained_words=[w.text for w in plan.trainable],
        files=done.paths[: len(plan.output_names())],
        text=plan.text,
        sentence=plan.sentence(),
        flip=choose_flip(config.flip, plan.text),
    )
