"""The `<perfusion:NAME:BETA>` prompt syntax, in one place for the tab, the API, the cards
and the host's extra network."""

from __future__ import annotations

TAG = "perfusion"


def perfusion_tag(name: str, beta: float) -> str:
    return f"<{TAG}:{name}:{beta:g}>"


def card_prompt(name: str, beta: float) -> str:
    """What a card adds: the tag, which installs the edits, and the concept word they are keyed to."""
    return f"{perfusion_tag(name, beta)} {name}"
