"""A run's names stay spliced through Extra Networks' Refresh (`captinv.hosts.live_embeddings`).

The database below has the shape of A1111's, reForge's and Forge's (`word_embeddings`,
`ids_lookup`, and their reload that clears both first); the real ones are exercised by the host
tiers' `test_refreshing_the_embedding_list_during_a_run_changes_nothing`.
"""

from __future__ import annotations

import pytest

from captinv.hosts import live_embeddings


class Embedding:
    def __init__(self, name: str) -> None:
        self.name = name


class Database:
    """The WebUIs' embedding database, reduced to what registration, lookup and reload do."""

    def __init__(self) -> None:
        self.word_embeddings: dict[str, Embedding] = {}
        self.ids_lookup: dict[int, list[tuple[list[int], Embedding]]] = {}

    def register(self, embedding: Embedding) -> None:
        first = hash(embedding.name) % 1000
        others = [entry for entry in self.ids_lookup.get(first, []) if entry[1].name != embedding.name]
        self.ids_lookup[first] = [*others, ([first], embedding)]
        self.word_embeddings[embedding.name] = embedding

    def splices(self, name: str) -> Embedding | None:
        """What the tokenizer would splice for `name` (it reads `ids_lookup` only)."""
        found = [entry for entries in self.ids_lookup.values() for _ids, entry in entries if entry.name == name]
        return found[0] if found else None


def test_an_encoding_made_while_a_refresh_had_emptied_the_database_is_made_again():
    db = Database()
    live: dict[str, Embedding] = {}
    reloads = iter([True, False])  # the Refresh lands during the first encoding only

    def register() -> None:
        if not live_embeddings.holds(db, "cat-w01", live.get("cat-w01")):
            live["cat-w01"] = Embedding("cat-w01")
            db.register(live["cat-w01"])

    def encode() -> Embedding | None:
        if next(reloads):
            db.ids_lookup.clear()  # the reload's first line; `word_embeddings` still names the run's
        return db.splices("cat-w01")

    encoded = live_embeddings.encode_registered(
        register, encode, lambda: live_embeddings.holds(db, "cat-w01", live["cat-w01"])
    )
    assert encoded is live["cat-w01"]


def test_refreshing_on_every_try_is_one_clear_error():
    db = Database()
    live = Embedding("cat-w01")

    def encode() -> None:
        db.word_embeddings.clear()
        db.ids_lookup.clear()

    with pytest.raises(RuntimeError, match="reloaded its embedding list during each of 5 tries"):
        live_embeddings.encode_registered(
            lambda: db.register(live), encode, lambda: live_embeddings.holds(db, "cat-w01", live)
        )


def test_a_file_of_the_same_name_loaded_by_the_refresh_is_not_the_runs_embedding():
    db = Database()
    live = Embedding("cat-w01")
    db.register(live)
    db.register(Embedding("cat-w01"))  # the reload read last run's cat-w01.safetensors
    assert not live_embeddings.holds(db, "cat-w01", live)
