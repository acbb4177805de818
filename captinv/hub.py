"""Where a model comes from, checked before it is loaded: a local folder or file, or a hub id.

Without a network, transformers and diffusers retry the Hugging Face hub for
minutes, with a warning per retry, before they fail. `locate` answers in a
fraction of a second instead: a path that does not exist is "not found"; a hub
id is usable when it is in the local cache (then loaded with
`local_files_only`, so nothing retries) or when the hub answers; otherwise the
message says how to give a local model.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captinv.errors import ModelLoadError

HUB_TIMEOUT = 3.0  # seconds to wait for the hub to answer
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_FILE_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class ModelSource:
    spec: str  # a local path, or a hub id
    local_only: bool  # load from local files only (a path, or a cached id while the hub is away)

    @property
    def load_kwargs(self) -> dict[str, Any]:
        return {"local_files_only": True} if self.local_only else {}


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or "\\" in spec
        or spec.count("/") > 1
        or Path(spec).suffix.lower() in _FILE_SUFFIXES
        or bool(re.match(r"[A-Za-z]:", spec))
    )


def _offline_setting() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable() -> bool:
    """Whether the hub (or `HF_ENDPOINT`) answers, unless offline mode is set."""
    return not _offline_setting() and _answers(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")


@functools.lru_cache(maxsize=4)
def _answers(url: str) -> bool:
    """Whether `url` gives an HTTP answer (any status) within `HUB_TIMEOUT`, through the proxies
    the environment sets, as the hub clients do. A port that accepts but never answers, a proxy
    that is down or a name that does not resolve all count as away; the request runs in a thread
    so that a slow name lookup, which no socket timeout covers, is bounded too."""
    answered = threading.Event()

    def ask() -> None:
        try:
            # build_opener reads the proxy settings now; urlopen keeps those of its first call
            opener = urllib.request.build_opener()
            opener.open(urllib.request.Request(url, method="HEAD"), timeout=HUB_TIMEOUT).close()
            answered.set()
        except urllib.error.HTTPError:  # an answer, if not a welcome one
            answered.set()
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=ask, name="captinv-hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT + 0.5)
    return answered.is_set()


def _cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:  # not a valid repo id after all
        return False


def locate(spec: str, *, what: str, marker: str, fix: str) -> ModelSource:
    """`spec` as a loadable source, or a `ModelLoadError` ending in `fix` (what to do instead).

    `marker` is a file every model of this kind has (`config.json`, `model_index.json`): its
    presence in the cache tells that a hub id was downloaded.
    """
    if Path(spec).expanduser().exists():
        return ModelSource(str(Path(spec).expanduser()), local_only=True)
    if _looks_like_path(spec) or not _HUB_ID.fullmatch(spec):
        raise ModelLoadError(f"The {what} '{spec}' was not found (no such folder or file). {fix}")
    if hub_reachable():
        return ModelSource(spec, local_only=False)
    if _cached(spec, marker):
        return ModelSource(spec, local_only=True)
    why = "offline mode is set (HF_HUB_OFFLINE)" if _offline_setting() else "the hub cannot be reached"
    raise ModelLoadError(f"The {what} '{spec}' is not downloaded and {why}. {fix}")
