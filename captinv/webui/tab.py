"""Wires the tab's components to the WebUI: queue, progress bar, interrupt, errors."""

from __future__ import annotations

from typing import Any

from modules import call_queue, shared

from captinv.errors import CaptinvError
from captinv.webui import service
from captinv.webui.layout import (
    SOURCE_CHOICES,
    TabComponents,
    build_tab,
    chips_html,
    config_values,
    loss_svg,
    message_html,
)
from captinv.webui.settings import opt

TITLE = "Invert from Caption"


def _run(components: TabComponents):
    option_names = list(components.options)

    def run(_task_id: str, image: Any, caption: str, source: str, name: str, *option_values: Any):
        values = config_values(option_names, option_values)
        try:
            result, preview = service.run_inversion(image, caption, name, values, SOURCE_CHOICES[source])
        except CaptinvError as err:
            return "", None, "", message_html(str(err), error=True)
        chips = chips_html(result.combined_name, result.word_names, result.sentence)
        done = f"Done in {result.seconds:.0f} s: {len(result.files)} embeddings written and loaded. Click a name to use it."
        return chips, preview, loss_svg(result.losses), message_html(done)

    return run


def _caption(image: Any, source: str):
    try:
        return service.caption(image, SOURCE_CHOICES[source]), ""
    except CaptinvError as err:
        return "", message_html(str(err), error=True)


def wire(components: TabComponents) -> None:
    inputs = [components.task_id, components.image, components.caption, components.source, components.name]
    outputs = [components.chips, components.preview, components.loss, components.info]
    components.run.click(
        fn=call_queue.wrap_gradio_gpu_call(_run(components), extra_outputs=["", None, ""]),
        _js="captinv.start",
        inputs=inputs + list(components.options.values()),
        outputs=outputs,
    )
    components.recaption.click(
        fn=call_queue.wrap_queued_call(_caption),
        inputs=[components.image, components.source],
        outputs=[components.caption, components.info],
    )
    components.interrupt.click(fn=lambda: shared.state.interrupt(), inputs=[], outputs=[])


def on_ui_tabs():
    defaults = {
        "steps": int(opt("captinv_default_steps")),
        "learning_rate": float(opt("captinv_default_learning_rate")),
    }
    blocks, components = build_tab(defaults)
    with blocks:
        wire(components)
    return [(blocks, TITLE, "captinv")]
