"""Which WebUI captinv runs in, decided once at start-up by what the WebUI has, not by what
it calls itself (forks copy version strings)."""

from __future__ import annotations

import importlib.util

from captinv.hosts.base import Host


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def detect_host() -> Host:
    """Forge 2 has diffusion engines under `backend/`; reForge (and Forge Classic) keep A1111's
    embedding database over `ldm_patched` models; everything else is A1111's model."""
    if _has_module("backend.diffusion_engine"):
        from captinv.hosts.forge.host import ForgeHost

        return ForgeHost()
    if _has_module("ldm_patched") and _has_embedding_db():
        from captinv.hosts.reforge.host import ReForgeHost

        return ReForgeHost()
    from captinv.hosts.a1111.host import A1111Host

    return A1111Host()


def _has_embedding_db() -> bool:
    from modules import sd_hijack

    return hasattr(sd_hijack.model_hijack, "embedding_db")
