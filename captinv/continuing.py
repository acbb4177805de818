"""Training a captinv set further ("continue from this embedding").

A second round starts where the first one ended: the same words (the caption stored in the set's
combined file, planned the way the first run planned it) with the stored vectors as their start,
not the caption's token rows. The combined file is all it needs: it holds every word's vectors in
prompt order, trained words and plain words alike, so it is split by the plan's vector counts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captinv import names
from captinv.backends.base import ModelBackend, Vectors
from captinv.config import InvertConfig
from captinv.embedding_io import check_layout, read_embedding
from captinv.errors import ConfigError, FileFormatError, option
from captinv.init_vectors import WordPlan


@dataclass(frozen=True)
class StoredSet:
    """What a set's combined file says about the run that made it."""

    path: Path
    caption: str
    vectors: Vectors
    metadata: dict[str, str]
    planning: dict[str, Any]  # the planning options the file records (files before 0.1 record none)

    @property
    def steps(self) -> int:
        return int(self.metadata.get("steps", "0") or 0)

    def planned_like(self, config: InvertConfig) -> InvertConfig:
        """`config` with the planning options of the stored run, so the words split as they did."""
        return dataclasses.replace(config, text=self.caption, **self.planning)


def read_set(path: str | Path) -> StoredSet:
    """The combined file of a captinv inversion set, or a one-line refusal of any other file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{option('start_from')}: {path} not found (give a set's combined file, NAME-all.safetensors).",
            field="start_from",
        )
    stored = read_embedding(path)
    meta = stored.metadata
    if meta.get("format") != "captinv" or "caption" not in meta:
        raise FileFormatError(
            f"{path.name} was not made by a captinv caption inversion: it stores no caption to continue from."
        )
    if "word" in meta:
        raise ConfigError(
            f"{path.name} is one word of a set; continue from the whole set, its combined file "
            f"(the name ending in {names.combined_name('')}).",
            field="start_from",
        )
    planning: dict[str, Any] = {}
    if "vectors_per_word" in meta:
        planning["vectors_per_word"] = (
            None if meta["vectors_per_word"] == "none" else int(meta["vectors_per_word"])
        )
    if "train_function_words" in meta:
        planning["train_function_words"] = json.loads(meta["train_function_words"])
    return StoredSet(path, meta["caption"], stored.vectors, meta, planning)


def check_text(stored: StoredSet, text: str | None) -> None:
    """A continued run keeps the stored words: a different caption would not fit its vectors."""
    if text is not None and " ".join(text.split()) != " ".join(stored.caption.split()):
        raise ConfigError(
            f"Continuing {stored.path.name} keeps its caption ({stored.caption!r}); leave the init text "
            "empty, or start a new set for another caption.",
            field="text",
        )


def start_from_stored(plan: WordPlan, stored: StoredSet, backend: ModelBackend) -> WordPlan:
    """`plan` (made from the stored caption) with the stored vectors as every word's start."""
    check_layout(stored.vectors, {enc.key: enc.width for enc in backend.encoders}, stored.path.name)
    rows = next(iter(stored.vectors.values())).shape[0]
    if rows != plan.vector_count:
        raise FileFormatError(
            f"{stored.path.name} holds {rows} vectors but its caption plans to {plan.vector_count} on this "
            f"model: set {option('vectors_per_word')} and {option('train_function_words')} as the set was made "
            "(files of earlier versions do not record them), or it was made for another tokenizer."
        )
    words, start = [], 0
    for word in plan.words:
        count = word.vector_count
        vectors = {key: value[start : start + count].clone() for key, value in stored.vectors.items()}
        words.append(dataclasses.replace(word, init=vectors) if word.trainable else word)
        start += count
    return dataclasses.replace(plan, words=words)
