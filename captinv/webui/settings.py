"""captinv's section in the WebUI's Settings ("Caption Inversion"), declared once.

Host-free and gradio-free: the host adds them with its own option machinery (`Host.add_settings`),
and the job code reads them back through `Host.option`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from captinv.config import DEFAULT_CAPTIONER, DEFAULT_CLASSIFIER, InvertConfig

SECTION = ("captinv", "Caption Inversion")


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    label: str
    component: Literal["slider", "number"] | None = None  # None: the WebUI picks one from the default
    component_args: dict[str, Any] = field(default_factory=dict)
    needs_reload: bool = False  # read when the tab is built: takes effect after Reload UI


_DEFAULTS = InvertConfig()
SETTINGS = [
    Setting("captinv_blip_model", DEFAULT_CAPTIONER, "BLIP captioning model (hub id or local folder)"),
    Setting("captinv_classifier_model", DEFAULT_CLASSIFIER, "Image-classification model for label init"),
    Setting(
        "captinv_default_steps",
        _DEFAULTS.steps,
        "Default steps",
        "slider",
        {"minimum": 1, "maximum": 5000, "step": 1},
        needs_reload=True,
    ),
    Setting(
        "captinv_default_learning_rate",
        _DEFAULTS.learning_rate,
        "Default learning rate",
        "number",
        needs_reload=True,
    ),
    Setting("captinv_preview", True, "Render a preview with the combined name after a run"),
    Setting("captinv_preview_steps", 20, "Preview sampling steps"),
    Setting(
        "captinv_live_preview_every",
        0,
        "Live preview every N training steps (0: off; each one costs a txt2img, slow on a CPU)",
        "number",
    ),
    Setting(
        "captinv_card_files", True, "Write <name>.preview.png and a description for the Extra Networks cards"
    ),
]
