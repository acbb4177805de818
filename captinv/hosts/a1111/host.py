"""AUTOMATIC1111's WebUI as a `Host`: the model is `shared.sd_model` (ldm/sgm), text goes
through `sd_hijack`, and one embedding database serves every prompt."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from modules import sd_hijack, shared
from torch import nn

from captinv.backends.base import Vectors
from captinv.hosts.a1111.backend import (
    A1111Backend,
    check_supported,
    register_embedding,
    unregister_embedding,
)
from captinv.hosts.a1111.model_state import base_model
from captinv.hosts.webui import WebUIHost


class A1111Host(WebUIHost):
    name = "AUTOMATIC1111"

    def check_supported(self) -> None:
        check_supported()

    @contextmanager
    def training_backend(self, keep_networks: bool = False) -> Iterator[A1111Backend]:
        with base_model(keep_networks) as active:
            check_supported()
            yield A1111Backend(networks=active.describe() if keep_networks else "")

    def register_embedding(self, name: str, vectors: Vectors) -> None:
        register_embedding(name, vectors)

    def unregister_embedding(self, name: str) -> None:
        unregister_embedding(name)

    def load_new_embeddings(self) -> None:
        sd_hijack.model_hijack.embedding_db.load_textual_inversion_embeddings(force_reload=True)
        self.reset_conditioning_cache()

    def denoiser(self) -> nn.Module | None:
        model = shared.sd_model
        return None if model is None else model.model.diffusion_model
