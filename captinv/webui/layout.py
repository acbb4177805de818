"""The "Invert from Caption" tab's components, built with plain gradio.

`build_tab` only lays components out and returns them in a `TabComponents`;
`captinv.webui.tab` wires them to the host. The option controls are generated
from `InvertConfig` and `PerfusionOptions`, so the tab offers exactly the CLI's
options with the same defaults. No WebUI import here, and nothing that exists in
only one gradio major version: the same layout runs in AUTOMATIC1111 and reForge
(gradio 3.41) and in Forge (gradio 4), and CI builds it with both.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from captinv.config import INVERSION_ONLY, InvertConfig, PerfusionOptions
from captinv.errors import tab_label
from captinv.webui.options import WEBUI_INVERSION_ONLY, WebUIOptions

SOURCE_CHOICES = {
    "WebUI BLIP interrogator": "webui-blip",
    "BLIP caption (transformers)": "caption",
    "Image classifier label": "classify",
    "My own text": "text",
}
MODES = {"Caption inversion (embeddings)": "invert", "Perfusion concept (K/V edit)": "perfusion"}
RUN_LABELS = {"invert": "Invert", "perfusion": "Train Perfusion concept"}
MAIN_OPTIONS = ("steps", "learning_rate", "templates")
NOT_CONTROLS = ("init", "text", "name", "captioner", "classifier", "start_from")
PERFUSION_FIELDS = tuple(spec.name for spec in dataclasses.fields(PerfusionOptions))
WEBUI_FIELDS = tuple(spec.name for spec in dataclasses.fields(WebUIOptions))


def _js_keyword() -> str:
    """The event keyword for a JavaScript pre-processor: `_js` in gradio 3, `js` in gradio 4
    (Forge's shim maps `_js` to `js`, so its wrapped listeners take either)."""
    parameters = inspect.signature(gr.Button().click).parameters
    return "_js" if "_js" in parameters else "js"


@dataclass
class TabComponents:
    task_id: Any
    images: Any
    gallery: Any
    caption: Any
    recaption: Any
    source: Any
    name: Any
    names_hint: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    mode: Any = None
    inversion_group: Any = None
    perfusion_group: Any = None
    run: Any = None
    stop: Any = None
    cancel: Any = None
    chips: Any = None
    preview: Any = None
    loss: Any = None
    info: Any = None
    js_keyword: str = "_js"


def option_control(spec: dataclasses.Field, default: Any, options: type = InvertConfig) -> Any:
    """A gradio control for one config field, with the field's help as its tooltip."""
    hint = typing.get_type_hints(options)[spec.name]
    base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
    common = {"label": tab_label(spec.name), "elem_id": f"captinv_{spec.name}", "info": spec.metadata["help"]}
    if spec.metadata.get("choices"):
        return gr.Radio(choices=list(spec.metadata["choices"]), value=default, **common)
    if base is bool:
        return gr.Checkbox(value=default, **common)
    if base is str:
        return gr.Textbox(value=default or "", **common)
    if spec.name == "steps":
        return gr.Slider(minimum=1, maximum=5000, step=1, value=default, **common)
    if spec.default is None:  # gradio sends an empty number as 0, which therefore means "automatic"
        common["info"] += " 0: automatic."
        default = 0
    return gr.Number(value=default, precision=0 if base is int else None, **common)


def config_values(names: list[str], values: tuple[Any, ...]) -> dict[str, Any]:
    """The tab's option values as config values: empty or 0 in an optional field means its default."""
    defaults = {
        spec.name: spec.default
        for options in (InvertConfig, PerfusionOptions, WebUIOptions)
        for spec in dataclasses.fields(options)
    }
    return {
        name: value
        for name, value in zip(names, values)
        if value not in (None, "") and not (defaults[name] is None and value == 0)
    }


@dataclass(frozen=True)
class RunOptions:
    """The tab's option values split by where they go."""

    invert: dict[str, Any]  # InvertConfig
    perfusion: dict[str, Any]  # PerfusionOptions
    webui: dict[str, Any]  # WebUIOptions


def mode_options(mode: str, values: dict[str, Any]) -> RunOptions:
    """The tab's values for `mode`; the other mode's options are dropped, since their controls
    are hidden in this mode."""
    perfusion = {k: v for k, v in values.items() if k in PERFUSION_FIELDS}
    webui = {k: v for k, v in values.items() if k in WEBUI_FIELDS}
    common = {k: v for k, v in values.items() if k not in PERFUSION_FIELDS + WEBUI_FIELDS}
    if mode == "perfusion":
        common = {k: v for k, v in common.items() if k not in INVERSION_ONLY}
        return RunOptions(
            common, perfusion, {k: v for k, v in webui.items() if k not in WEBUI_INVERSION_ONLY}
        )
    return RunOptions(common, {}, webui)


def mode_updates(mode_label: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """What a change of mode shows and hides: (inversion-only options, Perfusion options, run button)."""
    mode = MODES[mode_label]
    return (
        gr.update(visible=mode == "invert"),
        gr.update(visible=mode == "perfusion"),
        gr.update(value=RUN_LABELS[mode]),
    )


def build_tab(
    defaults: dict[str, Any] | None = None, source: str | None = None
) -> tuple[gr.Blocks, TabComponents]:
    """The tab; `defaults` override option defaults (from Settings), `source` the caption source."""
    values = InvertConfig().to_dict() | (defaults or {})
    specs = {spec.name: spec for spec in dataclasses.fields(InvertConfig)}
    webui_specs = {spec.name: spec for spec in dataclasses.fields(WebUIOptions)}
    with gr.Blocks(analytics_enabled=False) as blocks:
        task_id = gr.Textbox(visible=False, elem_id="captinv_task_id")
        with gr.Row():
            with gr.Column():
                images = gr.File(
                    file_count="multiple",
                    file_types=["image"],
                    label="Photos: one, or a few of the same subject (the first names the run)",
                    elem_id="captinv_images",
                )
                gallery = gr.Gallery(show_label=False, columns=5, height=140, elem_id="captinv_gallery")
                with gr.Row():
                    source_box = gr.Dropdown(
                        choices=list(SOURCE_CHOICES),
                        value=source or next(iter(SOURCE_CHOICES)),
                        label="Init words from",
                        elem_id="captinv_source",
                    )
                    recaption = gr.Button("Caption", elem_id="captinv_recaption")
                caption = gr.Textbox(
                    label="Caption (edit freely: one pseudo-word per word)",
                    lines=2,
                    elem_id="captinv_caption",
                )
                name = gr.Textbox(label="Name (default: the first photo's file name)", elem_id="captinv_name")
                components = TabComponents(task_id, images, gallery, caption, recaption, source_box, name)
                components.names_hint = gr.HTML(elem_id="captinv_names_hint")
                components.js_keyword = _js_keyword()
                for key in MAIN_OPTIONS:
                    components.options[key] = option_control(specs[key], values[key])
                components.mode = gr.Radio(
                    choices=list(MODES), value=next(iter(MODES)), label="Train", elem_id="captinv_mode"
                )
                with gr.Accordion("Advanced", open=False, elem_id="captinv_advanced"):
                    for key, spec in specs.items():
                        if key not in MAIN_OPTIONS + NOT_CONTROLS + INVERSION_ONLY:
                            components.options[key] = option_control(spec, values[key])
                    with gr.Group(elem_id="captinv_inversion_options") as components.inversion_group:
                        for key in INVERSION_ONLY:
                            if key not in NOT_CONTROLS:
                                components.options[key] = option_control(specs[key], values[key])
                        for key in WEBUI_INVERSION_ONLY:
                            components.options[key] = option_control(webui_specs[key], None, WebUIOptions)
                    for key, spec in webui_specs.items():
                        if key not in WEBUI_INVERSION_ONLY:
                            components.options[key] = option_control(spec, spec.default, WebUIOptions)
                with gr.Group(visible=False, elem_id="captinv_perfusion") as components.perfusion_group:
                    gr.Markdown(
                        "One concept word whose keys are locked to its superclass; use it in txt2img as "
                        "`NAME <perfusion:NAME:β>` (β 0.6-0.75: local, lower: stronger)."
                    )
                    for spec in dataclasses.fields(PerfusionOptions):
                        components.options[spec.name] = option_control(spec, spec.default, PerfusionOptions)
                with gr.Row():
                    components.cancel = gr.Button("Cancel", elem_id="captinv_cancel")
                    components.stop = gr.Button("Stop & save", elem_id="captinv_stop")
                    components.run = gr.Button(RUN_LABELS["invert"], variant="primary", elem_id="captinv_run")
            with gr.Column(elem_id="captinv_output"):
                gr.HTML('<div id="captinv_live"></div>', elem_id="captinv_live_box")  # owned by captinv.js
                components.info = gr.HTML(elem_id="captinv_info")
                components.chips = gr.HTML(elem_id="captinv_chips")
                components.preview = gr.Image(label="Preview", interactive=False, elem_id="captinv_preview")
                components.loss = gr.HTML(elem_id="captinv_loss")
    return blocks, components


def chips_html(combined: str, words: list[str], sentence: str) -> str:
    """Clickable names: a click appends the name to the txt2img prompt, "Send to txt2img" puts the
    whole learned sentence there (javascript/captinv.js)."""

    def chip(name: str, extra: str = "") -> str:
        quoted = html.escape(name, quote=True)
        return (
            f'<button class="captinv-chip{extra}" title="Add to the txt2img prompt" '
            f"onclick=\"captinv.sendToPrompt('{quoted}')\">{quoted}</button>"
        )

    use = html.escape(combined, quote=True)
    send = (
        '<button class="captinv-send" title="Replace the txt2img prompt with this" '
        f"onclick=\"captinv.sendToTxt2img('{use}')\">Send to txt2img</button>"
    )
    return (
        '<div class="captinv-chips">'
        f"{chip(combined, ' captinv-combined')}{''.join(chip(word) for word in words)}{send}"
        f'<p class="captinv-sentence">{html.escape(sentence)}</p></div>'
    )


def loss_svg(losses: list[float], width: int = 320, height: int = 120) -> str:
    """The loss per step as a small inline SVG (no plotting dependency in the WebUI)."""
    finite = [value for value in losses if value == value]
    if len(finite) < 2:
        return ""
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    points = " ".join(
        f"{i * width / (len(finite) - 1):.1f},{height - (value - low) / span * height:.1f}"
        for i, value in enumerate(finite)
    )
    return (
        f'<svg class="captinv-loss" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{points}"/></svg>'
        f"<div>loss {finite[0]:.4f} → {finite[-1]:.4f} over {len(finite)} steps</div>"
    )


def message_html(text: str, *, error: bool = False, type_caption: bool = False) -> str:
    """A message under the photo; `type_caption` also puts the cursor in the caption box."""
    classes = ["captinv-error error" if error else "captinv-message"] + (
        ["captinv-type-caption"] if type_caption else []
    )
    return f'<div class="{" ".join(classes)}">{html.escape(text)}</div>'
