"""The "Perfusion" tab of Extra Networks: a card per concept in models/perfusion.

Clicking a card adds `<perfusion:NAME:BETA> NAME` to the prompt, the way a Lora card adds
its tag and activation text: the tag installs the edits and the name is the concept word
they are keyed to, so the card alone makes a working prompt. A second click removes both
(the WebUI's card script treats the text after a tag as the tag's own).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modules import shared, ui_extra_networks
from modules.ui_extra_networks import quote_js
from torch import nn

from captinv.errors import CaptinvError
from captinv.hosts.perfusion_network import PerfusionNetwork
from captinv.perfusion.layers import cross_attention_layers
from captinv.webui.perfusion_tag import card_prompt


class PerfusionPage(ui_extra_networks.ExtraNetworksPage):
    def __init__(self, network: PerfusionNetwork) -> None:
        super().__init__("Perfusion")
        self.network = network  # shares its cache of loaded concept files

    def refresh(self) -> None:
        """Nothing to rescan: `list_items` reads the folder each time."""

    def create_item(
        self, name: str, index: int | None = None, enable_filter: bool = True
    ) -> dict[str, Any] | None:
        return self._item(name, index, _context_dim(self.network.host.denoiser()) if enable_filter else None)

    def list_items(self) -> Iterator[dict[str, Any]]:
        folder = self.network.host.concepts_dir
        paths = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        width = _context_dim(self.network.host.denoiser())  # once per listing, not once per card
        for index, path in enumerate(paths):
            item = self._item(path.stem, index, width)
            if item is not None:
                yield item

    def _item(self, name: str, index: int | None, width: int | None) -> dict[str, Any] | None:
        """The card of concept `name`; None when it cannot be read or, given the loaded model's
        cross-attention `width`, was trained for another model family (it would only be refused)."""
        try:
            concept = self.network.load(name)
        except (CaptinvError, OSError):
            return None
        if width is not None and concept.context_dim != width:
            return None
        path = self.network.host.concept_path(name)
        stem = str(path.with_suffix(""))
        return {
            "name": concept.name,
            "filename": str(path),
            "shorthash": _short_hash(path),  # the Tree view (reForge's default style) reads it
            "preview": self.find_preview(stem),
            "description": self.find_description(stem)
            or f"Perfusion concept, keys locked to '{concept.superclass}'",
            "search_terms": [self.search_terms_from_path(str(path)), concept.superclass],
            "prompt": quote_js(card_prompt(concept.name, concept.beta)),
            "local_preview": f"{stem}.preview.{shared.opts.samples_format}",
            "sort_keys": {"default": index, **self.get_sort_keys(str(path))},
        }

    def allowed_directories_for_previews(self) -> list[str]:
        return [str(self.network.host.concepts_dir)]


def _short_hash(path: Path) -> str:
    """The first ten hex digits of the file's sha256, as the WebUI shows for Loras and
    checkpoints (a concept file is small enough to hash at each listing)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    except OSError:  # gone since it was listed: the card shows no hash
        return ""


def _context_dim(unet: nn.Module | None) -> int | None:
    """The UNet's cross-attention width; None (show every card) when it cannot be read, e.g. no
    model is loaded or a generation has its layers wrapped."""
    if unet is None:
        return None
    try:
        layers = cross_attention_layers(unet)
    except CaptinvError:
        return None
    return layers[0].context_dim if layers else None
