"""reForge as a `Host`: A1111's host (same `sd_model` shells, same embedding database, same
registry) with reForge's way to reach the base model and its own backend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from captinv.hosts.a1111.backend import check_model
from captinv.hosts.a1111.host import A1111Host
from captinv.hosts.reforge.backend import ReForgeBackend
from captinv.hosts.reforge.model_state import base_model


class ReForgeHost(A1111Host):
    name = "reForge"

    def check_supported(self) -> None:
        """A1111's model checks; not its --lowvram refusal: reForge parses the flag but its memory
        manager, which ignores it, decides where weights live."""
        check_model()

    @contextmanager
    def training_backend(self, keep_networks: bool = False) -> Iterator[ReForgeBackend]:
        with base_model(keep_networks) as active:
            check_model()
            yield ReForgeBackend(networks=active.describe() if keep_networks else "")
