"""captinv's section in Settings ("Caption Inversion"), in the WebUI's own idiom."""

from __future__ import annotations

import gradio as gr
from modules import shared

from captinv.config import DEFAULT_CAPTIONER, DEFAULT_CLASSIFIER, InvertConfig

SECTION = ("captinv", "Caption Inversion")


def register() -> None:
    defaults = InvertConfig()
    options = {
        "captinv_blip_model": shared.OptionInfo(
            DEFAULT_CAPTIONER, "BLIP captioning model (hub id or local folder)"
        ),
        "captinv_classifier_model": shared.OptionInfo(
            DEFAULT_CLASSIFIER, "Image-classification model for label init"
        ),
        "captinv_default_steps": shared.OptionInfo(
            defaults.steps, "Default steps", gr.Slider, {"minimum": 1, "maximum": 5000, "step": 1}
        ),
        "captinv_default_learning_rate": shared.OptionInfo(
            defaults.learning_rate, "Default learning rate", gr.Number
        ),
        "captinv_preview": shared.OptionInfo(True, "Render a preview with the combined name after a run"),
        "captinv_preview_steps": shared.OptionInfo(20, "Preview sampling steps"),
        "captinv_card_files": shared.OptionInfo(
            True, "Write <name>.preview.png and a description for the Extra Networks cards"
        ),
    }
    for key, info in options.items():
        info.section = SECTION
        shared.opts.add_option(key, info)


def opt(key: str):
    return getattr(shared.opts, key)
