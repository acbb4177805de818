"""Wires the tab's components to the host: queue, progress bar, interrupt, errors."""

from __future__ import annotations

import dataclasses
from typing import Any

from captinv.config import PerfusionOptions
from captinv.errors import CaptinvError
from captinv.hosts.base import Host
from captinv.webui import jobs
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
from captinv.webui.perfusion_tag import perfusion_tag

TITLE = "Invert from Caption"
PERFUSION_FIELDS = tuple(f.name for f in dataclasses.fields(PerfusionOptions))


def _run(host: Host, components: TabComponents):
    option_names = list(components.options)

    def run(_task_id: str, image: Any, caption: str, source: str, name: str, mode: str, *option_values: Any):
        values = config_values(option_names, option_values)
        perfusion_values = {k: values.pop(k) for k in PERFUSION_FIELDS if k in values}
        try:
            if MODES[mode] == "perfusion":
                concept, preview = jobs.run_perfusion(
                    host, image, caption, name, values, perfusion_values, SOURCE_CHOICES[source]
                )
                beta = perfusion_values.get("beta", PerfusionOptions().beta)
                use = f"{concept.sentence} {perfusion_tag(concept.name, beta)}"
                chips = chips_html(use, [], f"{concept.name} ({concept.superclass}), {concept.size}")
                done = f"Done in {concept.seconds:.0f} s: {concept.path.name} written. Click to use it."
                return chips, preview, loss_svg(concept.losses), message_html(done)
            result, preview = jobs.run_inversion(host, image, caption, name, values, SOURCE_CHOICES[source])
        except CaptinvError as err:
            return "", None, "", message_html(str(err), error=True)
        chips = chips_html(result.combined_name, result.word_names, result.sentence)
        done = f"Done in {result.seconds:.0f} s: {len(result.files)} embeddings written and loaded. Click a name to use it."
        return chips, preview, loss_svg(result.losses), message_html(done)

    return run


def _caption(host: Host):
    def caption(image: Any, source: str):
        try:
            return jobs.caption(host, image, SOURCE_CHOICES[source]), ""
        except CaptinvError as err:
            return "", message_html(str(err), error=True)

    return caption


def wire(components: TabComponents, host: Host) -> None:
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
        fn=host.gpu_call(_run(host, components), extra_outputs=["", None, ""]),
        _js="captinv.start",
        inputs=inputs + list(components.options.values()),
        outputs=outputs,
    )
    components.recaption.click(
        fn=host.queued_call(_caption(host)),
        inputs=[components.image, components.source],
        outputs=[components.caption, components.info],
    )
    components.interrupt.click(fn=host.interrupt, inputs=[], outputs=[])


def on_ui_tabs(host: Host):
    defaults = {
        "steps": int(host.option("captinv_default_steps")),
        "learning_rate": float(host.option("captinv_default_learning_rate")),
    }
    blocks, components = build_tab(defaults)
    with blocks:
        wire(components, host)
    return [(blocks, TITLE, "captinv")]
