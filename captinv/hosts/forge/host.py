"""WebUI Forge as a `Host`, until training through its text engines lands: every run is
refused at the start with a message, and the `<perfusion:...>` tag stays silent."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from captinv.backends.base import ModelBackend, Vectors
from captinv.errors import UnsupportedModelError
from captinv.hosts.webui import WebUIHost

_REFUSAL = (
    "captinv cannot train inside WebUI Forge yet; use AUTOMATIC1111's WebUI, reForge or the captinv CLI."
)


class ForgeHost(WebUIHost):
    name = "Forge"

    def check_supported(self) -> None:
        raise UnsupportedModelError(_REFUSAL)

    @contextmanager
    def training_backend(self, keep_networks: bool = False) -> Iterator[ModelBackend]:
        raise UnsupportedModelError(_REFUSAL)
        yield  # pragma: no cover - a generator, so this is a context manager

    def register_embedding(self, name: str, vectors: Vectors) -> None:
        raise UnsupportedModelError(_REFUSAL)

    def unregister_embedding(self, name: str) -> None:
        """Nothing is ever registered."""

    def load_new_embeddings(self) -> None:
        """Nothing is ever written."""

    def denoiser(self) -> nn.Module | None:
        return None
