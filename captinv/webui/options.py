"""Options that exist only inside a WebUI (the tab and the API), declared like `InvertConfig`'s
so the tab's controls and the API's fields are generated from them the same way."""

from __future__ import annotations

from dataclasses import dataclass

from captinv.config import _opt, _Options


@dataclass
class WebUIOptions(_Options):
    keep_active_networks: bool = _opt(
        False,
        "Train on top of the LoRAs and hypernetworks the last generation left active. Off: train "
        "against the selected checkpoint alone (what the embedding will be used with in general). "
        "Recorded in the files.",
    )
    continue_from: str | None = _opt(
        None,
        "Train a captinv set further: the name of its combined embedding (NAME-all, as on its Extra "
        "Networks card). Its caption and vectors are the start, not a new caption; the new set needs a "
        "name of its own (or Overwrite).",
        none="a new set",
    )


WEBUI_INVERSION_ONLY = ("continue_from",)
"""WebUI options of caption inversion only (as `config.INVERSION_ONLY`)."""
