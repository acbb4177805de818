"""Extra Networks card files beside a run's outputs: `<name>.preview.png` and
`<name>.description.txt`, the names the WebUI's card pages look for.

The combined name's card shows what it generates and says it is the whole sentence; a word's
card shows a thumbnail of the photo and says which word of which run it is, so a page of cards
reads without opening files. Cards are small: a thumbnail, not a copy of the photo per word.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from captinv.files import write_set

THUMBNAIL = 256  # pixels on the long side, about what a card shows


@dataclass(frozen=True)
class Card:
    name: str
    picture: Image.Image
    description: str

    def files(self) -> dict[str, bytes]:
        """File name -> content."""
        image = self.picture.copy()
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {
            f"{self.name}.preview.png": buffer.getvalue(),
            f"{self.name}.description.txt": f"{self.description}\n".encode(),
        }


def inversion_cards(
    combined: str,
    words: dict[str, str],
    caption: str,
    photo: Image.Image,
    preview: Image.Image | None,
    note: str,
) -> list[Card]:
    """The combined name's card and one per trained word (`words`: name -> word of the caption)."""
    listing = ", ".join(f"{name} = {word}" for name, word in words.items())
    cards = [Card(combined, preview or photo, f'captinv ★ the whole sentence "{caption}" ({listing}).{note}')]
    for name, word in words.items():
        description = f'captinv: "{word}", one word of "{caption}" (all of it: {combined}).{note}'
        cards.append(Card(name, photo, description))
    return cards


def training_note(metadata: dict[str, str]) -> str:
    """What a user must match when using the files: the clip skip and networks they were trained at."""
    note = ""
    if "clip_skip" in metadata:
        note += f" Trained at clip skip {metadata['clip_skip']}: use the same Clip skip setting."
    if metadata.get("webui_networks"):
        note += f" Trained on top of {metadata['webui_networks']}."
    return note


def write_cards(folder: Path, cards: list[Card]) -> None:
    """The cards of a set, all or none (after the files: the preview needs them registered)."""
    write_set(
        folder, {name: content for card in cards for name, content in card.files().items()}, overwrite=True
    )
