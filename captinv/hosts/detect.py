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
    """Forge 2 has diffusion engines under `backend/`; everything else keeps A1111's model."""
    if _has_module("backend.diffusion_engine"):
        from captinv.hosts.forge.host import ForgeHost

        return ForgeHost()
    from captinv.hosts.a1111.host import A1111Host

    return A1111Host()
