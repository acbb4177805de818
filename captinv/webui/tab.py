"""Wires the tab's components to the host: queue, progress, stop and cancel, messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captinv import names
from captinv.config import PerfusionOptions
from captinv.errors import CaptinvError, tab_label
from captinv.hosts.base import Host
from captinv.images import load_images
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
    mode_options,
    mode_updates,
)
from captinv.webui.options import WebUIOptions
from captinv.webui.perfusion_tag import perfusion_tag

TITLE = "Invert from Caption"


def photo_paths(files: Any) -> list[str]:
    """The dropped files as paths: gradio 3 hands temporary-file objects, gradio 4 paths."""
    return [str(getattr(item, "name", item)) for item in (files or [])]


def names_hint(name: str, files: Any) -> str:
    """The base name a run will write, shown before it starts (names are made safe silently)."""
    paths = photo_paths(files)
    text = (name or "").strip() or (Path(paths[0]).stem if paths else "")
    if not text:
        return ""
    try:
        base = names.base_name(text)
    except CaptinvError as err:
        return message_html(err.render(tab_label), error=True)
    return message_html(f"Writes {names.combined_name(base)} and one {base}-wNN-<word> per word.")


def _run(host: Host, components: TabComponents):
    option_names = list(components.options)

    def run(_task_id: str, files: Any, caption: str, source: str, name: str, mode: str, *option_values: Any):
        chosen = mode_options(MODES[mode], config_values(option_names, option_values))
        photos = photo_paths(files)
        try:
            webui = WebUIOptions.from_mapping(chosen.webui)
            if MODES[mode] == "perfusion":
                concept, preview = jobs.run_perfusion(
                    host,
                    photos,
                    caption,
                    name,
                    chosen.invert,
                    chosen.perfusion,
                    SOURCE_CHOICES[source],
                    webui,
                )
                beta = chosen.perfusion.get("beta", PerfusionOptions().beta)
                use = f"{concept.sentence} {perfusion_tag(concept.name, beta)}"
                chips = chips_html(use, [], f"{concept.name} ({concept.superclass}), {concept.size}")
                done = (
                    f"Done in {concept.seconds:.0f} s ({concept.stop_summary()}): {concept.path.name} written. "
                    "Click to use it."
                )
                return chips, preview, loss_svg(concept.losses), message_html(done)
            result, preview = jobs.run_inversion(
                host, photos, caption, name, chosen.invert, SOURCE_CHOICES[source], webui
            )
        except CaptinvError as err:
            return (
                "",
                None,
                "",
                message_html(err.render(tab_label), error=True, type_caption=jobs.needs_typed_caption(err)),
            )
        chips = chips_html(result.combined_name, result.word_names, result.sentence)
        done = (
            f"Done in {result.seconds:.0f} s ({result.stop_summary()}): {len(result.files)} embeddings written "
            "and loaded. Click a name to use it."
        )
        return chips, preview, loss_svg(result.losses), message_html(done)

    return run


def _caption(host: Host):
    def caption(files: Any, source: str, current: str):
        try:
            return jobs.caption(host, photo_paths(files), SOURCE_CHOICES[source]), message_html("")
        except CaptinvError as err:  # a failed caption leaves the caption box as it was
            return current, message_html(
                err.render(tab_label), error=True, type_caption=jobs.needs_typed_caption(err)
            )

    return caption


def _photos_dropped(files: Any, name: str):
    """Show the photos, name the run after the first, and refuse at once a file that is no image."""
    paths = photo_paths(files)
    try:
        load_images(paths) if paths else None
    except CaptinvError as err:
        return [], name, message_html(err.render(tab_label), error=True)
    if not (name or "").strip() and paths:
        name = Path(paths[0]).stem
    return paths, name, ""


def wire(components: TabComponents, host: Host) -> None:
    inputs = [
        components.task_id,
        components.images,
        components.caption,
        components.source,
        components.name,
        components.mode,
    ]
    outputs = [components.chips, components.preview, components.loss, components.info]
    inputs += list(components.options.values())
    js = {components.js_keyword: f"(...values) => captinv.start({len(inputs)}, values)"}
    # Clear the last run's results at once (not queued), then run under the queue with progress.
    components.run.click(fn=lambda: ("", None, "", ""), inputs=[], outputs=outputs, queue=False).then(
        fn=host.gpu_call(_run(host, components), extra_outputs=["", None, ""]),
        inputs=inputs,
        outputs=outputs,
        **js,
    )
    components.recaption.click(
        fn=host.queued_call(_caption(host)),
        inputs=[components.images, components.source, components.caption],
        outputs=[components.caption, components.info],
    )
    components.images.change(
        fn=_photos_dropped,
        inputs=[components.images, components.name],
        outputs=[components.gallery, components.name, components.info],
    )
    for trigger in (components.name, components.images):
        trigger.change(
            fn=names_hint, inputs=[components.name, components.images], outputs=[components.names_hint]
        )
    components.mode.change(
        fn=mode_updates,
        inputs=[components.mode],
        outputs=[components.inversion_group, components.perfusion_group, components.run],
    )
    components.stop.click(fn=host.stop_and_save, inputs=[], outputs=[])
    components.cancel.click(fn=host.interrupt, inputs=[], outputs=[])


def on_ui_tabs(host: Host):
    defaults = {
        "steps": int(host.option("captinv_default_steps")),
        "learning_rate": float(host.option("captinv_default_learning_rate")),
    }
    blocks, components = build_tab(defaults)
    with blocks:
        wire(components, host)
    return [(blocks, TITLE, "captinv")]
