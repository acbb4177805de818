"""Init text -> words -> BPE tokens -> the starting vectors of each pseudo-word.

Words are tokenized one at a time: CLIP's pre-tokenizer splits at spaces and
punctuation before BPE, so the per-word token lists concatenate to exactly the
tokens of the whole caption, and each pseudo-word starts as the very rows the
model reads for that word (one vector per token, both tables on SDXL).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from captinv import names
from captinv.backends.base import ModelBackend, Vectors
from captinv.config import MAX_VECTORS, InvertConfig
from captinv.errors import CaptionError, option

# Words the paper trains like any other; with train_function_words off they stay plain text.
FUNCTION_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "on",
        "in",
        "at",
        "to",
        "and",
        "or",
        "with",
        "without",
        "for",
        "by",
        "from",
        "into",
        "onto",
        "over",
        "under",
        "near",
        "next",
        "is",
        "are",
        "was",
        "were",
        "be",
        "its",
        "it",
        "this",
        "that",
        "these",
        "those",
        "his",
        "her",
        "their",
        "some",
    ]
)
_WORD = re.compile(r"\w+(?:[-'’]\w+)*")


def split_words(text: str) -> list[str]:
    """Words of the init text; punctuation between words is dropped.

    A text of symbols only (classic textual inversion's `*`) is kept as it is.
    """
    return _WORD.findall(text) or text.split()


@dataclass
class PseudoWord:
    index: int  # 1-based position in the init text
    text: str
    token_ids: list[int]
    init: Vectors  # encoder key -> [n, width], float32
    trainable: bool
    name: str | None = None  # embedding name, for trainable words

    @property
    def vector_count(self) -> int:
        return next(iter(self.init.values())).shape[0]

    def prompt_text(self) -> str:
        return self.name if self.trainable else self.text


@dataclass
class WordPlan:
    """Which words become pseudo-words, their names and starting vectors."""

    text: str
    base: str
    words: list[PseudoWord] = field(default_factory=list)

    @property
    def combined_name(self) -> str:
        return names.combined_name(self.base)

    @property
    def trainable(self) -> list[PseudoWord]:
        return [word for word in self.words if word.trainable]

    @property
    def vector_count(self) -> int:
        return sum(word.vector_count for word in self.words)

    def output_names(self) -> list[str]:
        return [self.combined_name, *(word.name for word in self.trainable)]

    def sentence(self) -> str:
        """The init text with each trained word replaced by its pseudo-word name."""
        return " ".join(word.prompt_text() for word in self.words)


def _spread(rows: Vectors, count: int | None) -> Vectors:
    """`count` starting vectors from a word's token rows, or the rows as they are.

    Fewer vectors than tokens: the rows are split into `count` runs of consecutive tokens, as even
    as possible, and each vector starts at its run's mean (one vector for "sleeping" = sleep + ing
    starts between the two, not at "sleep"). More vectors than tokens: the rows repeat in order
    (kohya's rule).
    """
    if count is None:
        return rows
    spread = {}
    for key, value in rows.items():
        if count < value.shape[0]:
            spread[key] = torch.stack([run.mean(dim=0) for run in value.tensor_split(count)])
        else:
            spread[key] = value[torch.arange(count) % value.shape[0]].clone()
    return spread


def _checked_words(text: str, config: InvertConfig) -> list[tuple[str, bool]]:
    """(word, trained?) for each word of the init text, or a `CaptionError` saying what is wrong."""
    words = split_words(text)
    if not words:
        raise CaptionError("The init text is empty: write a caption (or a word such as 'cat') first.")
    if len(words) > 99:
        raise CaptionError(f"The init text has {len(words)} words; at most 99 can become pseudo-words.")
    chosen = [(word, config.train_function_words or word.lower() not in FUNCTION_WORDS) for word in words]
    if not any(trained for _, trained in chosen):
        raise CaptionError(
            "Every word of the init text is a function word; add a content word or train them too."
        )
    return chosen


def planned_names(text: str, base: str, config: InvertConfig) -> list[str]:
    """The embedding names an inversion of `text` will write, known before any model loads."""
    words = _checked_words(text, config)
    return [
        names.combined_name(base),
        *(names.word_name(base, index, word) for index, (word, trained) in enumerate(words, 1) if trained),
    ]


def plan_words(backend: ModelBackend, text: str, base: str, config: InvertConfig) -> WordPlan:
    words = _checked_words(text, config)
    plan = WordPlan(text=" ".join(word for word, _ in words), base=base)
    for index, (word, trainable) in enumerate(words, start=1):
        token_ids = backend.tokenize(word)
        rows = backend.token_rows(token_ids)
        plan.words.append(
            PseudoWord(
                index=index,
                text=word,
                token_ids=token_ids,
                init=_spread(rows, config.vectors_per_word) if trainable else rows,
                trainable=trainable,
                name=names.word_name(base, index, word) if trainable else None,
            )
        )
    if plan.vector_count > MAX_VECTORS:
        raise CaptionError(
            f"The init text needs {plan.vector_count} vectors but a prompt holds at most {MAX_VECTORS}. "
            f"Shorten the caption (or lower {option('vectors_per_word')})."
        )
    return plan
