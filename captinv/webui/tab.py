"""Wires the tab's components to the WebUI: queue, progress bar, interrupt, errors."""

from __future__ import annotations

import dataclasses
from typing import Any

from modules import call_queue, shared

from captinv.config import PerfusionOptions
from captinv.errors import CaptinvError
from captinv.webui import service
from captinv.webui.layout import (
    MODES,
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
PERFUSION_FIELDS = tuple(f.name for f in dataclasses.fields(PerfusionOptions))


def _run(components: TabComponents):
    option_names = list(components.options)

    def run(_task_id: str, image: Any, caption: str, source: str, name: str, mode: str, *option_values: Any):
        values = config_values(option_names, option_values)
        perfusion_values = {k: values.pop(k) for k in PERFUSION_FIELDS if k in values}
        try:
            if MODES[mode] == "perfusion":
                concept, preview = service.run_perfusion(
                    image, caption, name, values, perfusion_values, SOURCE_CHOICES[source]
                )
                beta = perfusion_values.get("beta", PerfusionOptions().beta)
                use = f"{concept.sentence} {service.perfusion_tag(concept.name, beta)}"
                chips = chips_html(use, [], f"{concept.name} ({concept.superclass}), {concept.size}")
                done = f"Done in {concept.seconds:.0f} s: {concept.path.name} written. Click to use it."
                return chips, preview, loss_svg(concept.losses), message_html(done)
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
    inputs = [
        components.task_id,
        components.image,
        components.caption,
        components.source,
        components.name,
        components.mode,
    ]
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
