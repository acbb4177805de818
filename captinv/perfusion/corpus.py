"""The prompts a text-encoding covariance is estimated from.

The paper's covariance comes from ~100K real (LAION) captions; captinv stays
offline, so the default corpus is generated: sentence shapes of three kinds of
text a text encoder meets — dataset captions ("two dogs playing with a ball in
a park"), alt texts ("vintage red bicycle against a brick wall, stock photo")
and prompts ("portrait of a knight, oil painting, dramatic shadows") — filled
from broad word lists (`vocabulary`), seeded, so it is the same everywhere and
its id names it. A user's own captions (a text file with one per line, or a
folder of .txt caption files) are interleaved with it one to one, so they carry
half the weight of every prefix the estimate may stop at.

A corpus's id is a content hash: the covariance cache is keyed by it.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from captinv.errors import option
from captinv.perfusion import vocabulary as v
from captinv.perfusion.errors import CovarianceError

GENERATOR_VERSION = 2  # bump when the generator's output changes: the id (and the cache) follow
DEFAULT_SIZE = 50_000
HELD_OUT_SEED = 1_000_003  # prompts for measurements, drawn apart from the corpus's seed
_CAPTION_SUFFIXES = (".txt",)

_IRREGULAR = {
    "man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice",
    "sheep": "sheep", "fish": "fish", "deer": "deer", "goose": "geese", "knife": "knives",
    "leaf": "leaves", "wolf": "wolves", "shelf": "shelves", "policeman": "policemen", "teeth": "teeth",
    "bus": "buses", "glass": "glasses", "glasses": "glasses", "cactus": "cacti", "sushi": "sushi",
    "fries": "fries", "noodles": "noodles", "rice": "rice", "grass": "grass", "tea": "tea",
}  # fmt: skip
_LIVING = v.PEOPLE + v.ANIMALS
_OBJECTS = v.THINGS + v.FOOD + v.VEHICLES
_ANY = _LIVING + _OBJECTS + v.BUILDINGS + v.NATURE + v.SHAPES


@dataclass(frozen=True)
class Corpus:
    """Prompts in the order they are encoded, and the id the covariance records."""

    prompts: Sequence[str]
    corpus_id: str

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def of(cls, prompts: Sequence[str]) -> Corpus:
        """Exactly these prompts, named by their content."""
        return cls(list(prompts), _digest(*prompts))


def plural(noun: str) -> str:
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR:
        word = _IRREGULAR[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        word = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


class _Draw:
    """One sentence's random choices (a small grammar over `vocabulary`)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, words: Sequence[str]) -> str:
        return self.rng.choice(words)

    def maybe(self, words: Sequence[str], chance: float = 0.5) -> str:
        return self.pick(words) + " " if self.rng.random() < chance else ""

    def noun(self, words: Sequence[str] = _ANY, adjective: float = 0.5) -> str:
        """'red car', 'old wooden chair', 'dog'."""
        colour = self.maybe(v.COLOURS, adjective * 0.6)
        quality = self.maybe(v.QUALITIES, adjective * 0.6)
        return f"{quality}{colour}{self.pick(words)}"

    def some(self, words: Sequence[str] = _ANY) -> str:
        """'a red car', 'the dog', 'two old men', 'a group of tourists'."""
        if self.rng.random() < 0.2:
            count, head, _, last = self.pick(v.NUMBERS), *self.noun(words).rpartition(" ")
            return f"{count} {head} {plural(last)}".replace("  ", " ")
        phrase = self.noun(words)
        return f"the {phrase}" if self.rng.random() < 0.25 else _a(phrase)

    def place(self) -> str:
        return self.pick(v.PLACES)

    def tags(self, low: int, high: int) -> str:
        return ", ".join(self.rng.sample(v.STYLE_TAGS, self.rng.randint(low, high)))


def _captions() -> list[Callable[[_Draw], str]]:
    """Dataset-caption shapes (COCO style: who does what where)."""
    return [
        lambda d: f"{d.some(_LIVING)} {d.pick(v.ACTIONS)} {d.place()}",
        lambda d: f"{d.some(v.PEOPLE)} {d.pick(v.HANDLING)} {d.some(_OBJECTS + v.ANIMALS)} {d.place()}",
        lambda d: f"{d.some(v.PEOPLE)} {d.pick(v.HANDLING)} {d.some(_OBJECTS)}",
        lambda d: f"{d.some(_ANY)} {d.pick(v.RELATIONS)} {d.some(_ANY)}",
        lambda d: f"there is {d.some(_ANY)} {d.place()}",
        lambda d: f"a close up of {d.some(_OBJECTS)} {d.pick(v.RELATIONS)} {d.some(v.THINGS)}",
        lambda d: f"{_a(d.noun(v.ROOMS))} with {d.some(v.THINGS)} and {d.some(v.THINGS)}",
        lambda d: f"a plate of {d.pick(v.FOOD)} with {d.pick(v.FOOD)} and {d.pick(v.FOOD)}",
        lambda d: f"{d.some(v.VEHICLES)} parked {d.place()}",
        lambda d: f"a view of {d.some(v.BUILDINGS + v.NATURE)} from {d.some(v.BUILDINGS + v.NATURE)}",
        lambda d: f"{d.some(_LIVING)} that is {d.pick(v.ACTIONS)} next to {d.some(_ANY)}",
        lambda d: f"{d.some(_ANY)} and {d.some(_ANY)} {d.place()}",
        lambda d: f"{d.some(v.SHAPES)} {d.place()}",
        lambda d: f"{d.some(v.ANIMALS)} is {d.pick(v.ACTIONS)} {d.pick(v.RELATIONS)} {d.some(_ANY)}",
        lambda d: f"black and white photo of {d.some(_ANY)} {d.place()}",
    ]


def _alt_texts() -> list[Callable[[_Draw], str]]:
    """Alt-text shapes (web images: products, stock photos, listings)."""
    return [
        lambda d: f"{d.noun(_ANY, 1.0)} {d.place()}",
        lambda d: f"{d.noun(_OBJECTS, 1.0)} isolated on white background",
        lambda d: f"stock photo of {d.some(_ANY)} {d.place()}",
        lambda d: f"{d.noun(v.THINGS + v.SHAPES, 0.7)} icon, flat {d.pick(v.MEDIA)}",
        lambda d: f"{d.noun(v.THINGS, 1.0)} for {plural(d.pick(v.PEOPLE))}",
        lambda d: f"{d.noun(v.ROOMS, 1.0)} interior with {d.noun(v.THINGS, 1.0)}",
        lambda d: f"close-up of {d.noun(v.NATURE + v.THINGS, 1.0)} texture",
        lambda d: f"{d.some(v.SHAPES)} on {_a(d.pick(v.COLOURS))} background",
        lambda d: f"{d.pick(v.MEDIA)} of {d.some(_ANY)}",
        lambda d: f"{d.noun(_ANY, 1.0)}",
        lambda d: f"{d.pick(v.ANIMALS)}",
        lambda d: f"{d.pick(v.COLOURS)} and {d.pick(v.COLOURS)} {plural(d.pick(v.SHAPES))} pattern",
    ]


def _prompts() -> list[Callable[[_Draw], str]]:
    """Prompt shapes (what users type: subject, medium, comma-separated tags)."""
    return [
        lambda d: f"{d.some(_ANY)} {d.place()}, {d.tags(1, 3)}",
        lambda d: f"{_a(d.pick(v.MEDIA))} of {d.some(_ANY)}, {d.tags(1, 4)}",
        lambda d: f"portrait of {d.some(v.PEOPLE + v.ANIMALS)} wearing {d.some(v.THINGS)}, {d.tags(2, 4)}",
        lambda d: f"{d.noun(_ANY, 1.0)}, {d.noun(_ANY, 1.0)}, {d.tags(1, 5)}",
        lambda d: f"{d.some(_LIVING)} {d.pick(v.HANDLING)} {d.some(_ANY)} {d.place()}, {d.pick(v.MEDIA)}",
        lambda d: f"{d.noun(v.BUILDINGS + v.NATURE, 1.0)} {d.place()}, {d.tags(2, 5)}",
        lambda d: f"{d.some(_ANY)}, {d.pick(v.MEDIA)}, {d.tags(3, 6)}, {d.pick(v.COLOURS)} tones",
        lambda d: f"{d.pick(v.QUALITIES)} {d.pick(_ANY)}",
    ]


_SHAPES_OF_TEXT = _captions() + _alt_texts() + _prompts()


def generated_prompts(size: int = DEFAULT_SIZE, seed: int = 0) -> list[str]:
    """`size` distinct generated prompts, the same for the same seed and generator version."""
    draw = _Draw(random.Random(seed))
    prompts: dict[str, None] = {}
    for _ in range(size * 10):
        if len(prompts) == size:
            return list(prompts)
        text = draw.pick(_SHAPES_OF_TEXT)(draw)
        prompts.setdefault(re.sub(r"\s+", " ", text).strip(), None)
    raise CovarianceError(f"Could not generate {size} distinct prompts; use a smaller corpus.")


def read_captions(path: Path) -> list[str]:
    """Captions from a text file (one per line) or a folder of .txt caption files (one per file)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _CAPTION_SUFFIXES and p.is_file())
        texts = [" ".join(_read(p).split()) for p in files]
    elif path.is_file():
        texts = [" ".join(line.split()) for line in _read(path).splitlines()]
    else:
        raise CovarianceError(f"No caption file or folder at {path} ({option('covariance_captions')}).")
    captions = [text for text in texts if text]
    if not captions:
        raise CovarianceError(
            f"{path} holds no captions; give {option('covariance_captions')} a text file with one caption "
            "per line or a folder of .txt caption files."
        )
    return captions


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise CovarianceError(f"Cannot read the caption file {path}: {err}") from err


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def build_corpus(captions: Sequence[str] = (), *, size: int = DEFAULT_SIZE, seed: int = 0) -> Corpus:
    """The generated prompts, with `captions` (shuffled, seeded) interleaved one to one at the front."""
    generated = generated_prompts(size, seed)
    own = sorted(captions)  # the same captions in any order are the same corpus
    random.Random(seed).shuffle(own)
    mixed: list[str] = []
    for index, caption in enumerate(own):
        mixed += [caption, generated[index]] if index < len(generated) else [caption]
    mixed += generated[len(own) :]
    parts = [f"generated-v{GENERATOR_VERSION}-{size}-{seed}"]
    if own:
        parts.append(_digest(*own))
    return Corpus(mixed, _digest(*parts))


def held_out_prompts(count: int, exclude: Sequence[str] = (), words: Sequence[str] = ()) -> list[str]:
    """Generated prompts outside `exclude` and without any of `words` (whole words, any case)."""
    banned = set(exclude)
    pattern = (
        re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE) if words else None
    )
    chosen = []
    for prompt in generated_prompts(count * 4, HELD_OUT_SEED):
        if prompt not in banned and not (pattern and pattern.search(prompt)):
            chosen.append(prompt)
            if len(chosen) == count:
                break
    return chosen
