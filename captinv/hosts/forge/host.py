"""WebUI Forge (Forge 2) as a `Host`: the model is a diffusion engine whose text engines each keep
their own embedding database, and two display-only databases feed the lists users see (Extra
Networks' Textual Inversion page and `GET /sdapi/v1/embeddings`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from modules import shared
from torch import nn

from captinv.backends.base import Vectors
from captinv.hosts.forge import text
from captinv.hosts.forge.backend import ForgeBackend, check_supported
from captinv.hosts.forge.model_state import active_networks, clip_skip_layers, loaded_model, run_objects
from captinv.hosts.webui import WebUIHost

_EMBEDDINGS_ROUTE = "/sdapi/v1/embeddings"


class ForgeHost(WebUIHost):
    name = "Forge"

    def check_supported(self) -> None:
        check_supported(loaded_model())

    @contextmanager
    def training_backend(self, keep_networks: bool = False) -> Iterator[ForgeBackend]:
        model = loaded_model()
        check_supported(model)
        with run_objects(model, keep_networks) as objects, text.clip_skip(model, clip_skip_layers()):
            yield ForgeBackend(model, objects, networks=active_networks(model) if keep_networks else "")

    def register_embedding(self, name: str, vectors: Vectors) -> None:
        text.register(shared.sd_model, text.make_embedding(name, vectors))

    def unregister_embedding(self, name: str) -> None:
        text.unregister(shared.sd_model, name)

    def load_new_embeddings(self) -> None:
        """Forge reads the embeddings folder into its engines only when it loads a model, and its
        lists only on a Refresh click or `POST /sdapi/v1/refresh-embeddings`: reload all three."""
        for _key, engine in text.text_engines(shared.sd_model):
            engine.embeddings.load_textual_inversion_embeddings()
        for db in self._display_databases():
            db.load_textual_inversion_embeddings(force_reload=True, sync_with_sd_model=False)
        self.reset_conditioning_cache()

    def denoiser(self) -> nn.Module | None:
        objects = getattr(shared.sd_model, "forge_objects", None)
        return None if objects is None else objects.unet.model.diffusion_model

    def _display_databases(self) -> list[Any]:
        """The Extra Networks page's database (once its module is loaded) and the API's, found
        through its route (the `Api` object is kept nowhere else)."""
        found = []
        page = sys.modules.get("modules.ui_extra_networks_textual_inversion")
        if page is not None:
            found.append(page.embedding_db)
        for route in getattr(self.app, "routes", []):
            if getattr(route, "path", None) == _EMBEDDINGS_ROUTE:
                api = getattr(getattr(route, "endpoint", None), "__self__", None)
                if hasattr(api, "embedding_db"):
                    found.append(api.embedding_db)
        return found
