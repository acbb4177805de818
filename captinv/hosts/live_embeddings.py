"""A run's live vectors in a WebUI's embedding database, kept there through a Refresh.

A1111, reForge and each of Forge's text engines keep one embedding database of the same shape:
`word_embeddings` (name → `Embedding`) and `ids_lookup` (first token id → [(token ids,
`Embedding`)]), which the tokenizer reads to splice a name's vectors. Extra Networks' Refresh is
not behind the WebUI's queue: it clears both and reloads them from disk in its own thread, at any
moment of a run. An encoding made while the run's names were missing from `ids_lookup` has the
names' plain tokens instead of the trained vectors, silently: the step learns nothing right.
So each encoding is checked after it is made, and made again if the database lost a name.

Nothing here imports a WebUI: the databases are duck-typed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

TRIES = 5  # a Refresh takes well under a step; five in a row mean someone holds the button down


def holds(db: Any, name: str, embedding: Any) -> bool:
    """Whether the database would splice this very `embedding` for `name` now: the tokenizer
    looks names up in `ids_lookup`, the lists and the checks in `word_embeddings`."""
    if db.word_embeddings.get(name) is not embedding:
        return False
    return any(entry is embedding for entries in list(db.ids_lookup.values()) for _ids, entry in entries)


def encode_registered(register: Callable[[], None], encode: Callable[[], T], held: Callable[[], bool]) -> T:
    """`encode()` with the run's names registered throughout: `register()` (re-)registers what
    the database lost, and an encoding after which `held()` is false is made again. The check
    comes after the encoding because a reload only ever removes the run's entries: still there
    after means there all along."""
    for _ in range(TRIES):
        register()
        encoded = encode()
        if held():
            return encoded
    raise RuntimeError(
        f"The WebUI reloaded its embedding list during each of {TRIES} tries to encode this run's "
        "prompts; let the run train without pressing Refresh."
    )
