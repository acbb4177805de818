"""The "Invert from Caption" tab's components, built with plain gradio.

`build_tab` only lays components out and returns them in a `TabComponents`;
`captinv.webui.tab` wires them to the WebUI's queue. The option controls are
generated from `InvertConfig`, so the tab offers exactly the CLI's options with
the same defaults. No WebUI import here: CI builds this layout with gradio alone.
"""

from __future__ import annotations

import dataclasses
import html
import typing
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from captinv.config import InvertConfig, PerfusionOptions

SOURCE_CHOICES = {
    "BLIP caption (transformers)": "caption",
    "WebUI BLIP interrogator": "webui-blip",
    "Image classifier label": "classify",
    "My own text": "text",
}
MODES = {"Caption inversion (embeddings)": "invert", "Perfusion concept (K/V edit)": "perfusion"}
MAIN_OPTIONS = ("steps", "learning_rate", "templates")
NOT_CONTROLS = ("init", "text", "name", "captioner", "classifier")


@dataclass
class TabComponents:
    task_id: Any
    image: Any
    caption: Any
    recaption: Any
    source: Any
    name: Any
    options: dict[str, Any] = field(default_factory=dict)
    mode: Any = None
    run: Any = None
    interrupt: Any = None
    chips: Any = None
    preview: Any = None
    loss: Any = None
    info: Any = None


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def option_control(spec: dataclasses.Field, default: Any, options: type = InvertConfig) -> Any:
    """A gradio control for one config field, with the field's help as its tooltip."""
    hint = typing.get_type_hints(options)[spec.name]
    base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
    common = {"label": _label(spec.name), "elem_id": f"captinv_{spec.name}", "info": spec.metadata["help"]}
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
        for options in (InvertConfig, PerfusionOptions)
        for spec in dataclasses.fields(options)
    }
    return {
        name: value
        for name, value in zip(names, values)
        if value not in (None, "") and not (defaults[name] is None and value == 0)
    }


def build_tab(defaults: dict[str, Any] | None = None) -> tuple[gr.Blocks, TabComponents]:
    values = InvertConfig().to_dict() | (defaults or {})
    specs = {spec.name: spec for spec in dataclasses.fields(InvertConfig)}
    with gr.Blocks(analytics_enabled=False) as blocks:
        task_id = gr.Textbox(visible=False, elem_id="captinv_task_id")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", elem_id="captinv_image")
                with gr.Row():
                    source = gr.Dropdown(
                        choices=list(SOURCE_CHOICES),
                        value=next(iter(SOURCE_CHOICES)),
                        label="Init words from",
                        elem_id="captinv_source",
                    )
                    recaption = gr.Button("Caption", elem_id="captinv_recaption")
                caption = gr.Textbox(
                    label="Caption (edit freely: one pseudo-word per word)",
                    lines=2,
                    elem_id="captinv_caption",
                )
                name = gr.Textbox(label="Name (default: the image's file name)", elem_id="captinv_name")
                components = TabComponents(task_id, image, caption, recaption, source, name)
                for key in MAIN_OPTIONS:
                    components.options[key] = option_control(specs[key], values[key])
                components.mode = gr.Radio(
                    choices=list(MODES), value=next(iter(MODES)), label="Train", elem_id="captinv_mode"
                )
                with gr.Accordion("Advanced", open=False):
                    for key, spec in specs.items():
                        if key not in MAIN_OPTIONS and key not in NOT_CONTROLS:
                            components.options[key] = option_control(spec, values[key])
                with gr.Accordion("Perfusion", open=False, elem_id="captinv_perfusion"):
                    gr.Markdown(
                        "One concept word whose keys are locked to its superclass; use it in txt2img as "
                        "`NAME <perfusion:NAME:β>` (β 0.6-0.75: local, lower: stronger)."
                    )
                    for spec in dataclasses.fields(PerfusionOptions):
                        components.options[spec.name] = option_control(spec, spec.default, PerfusionOptions)
                with gr.Row():
                    components.interrupt = gr.Button("Interrupt", elem_id="captinv_interrupt")
                    components.run = gr.Button("Invert", variant="primary", elem_id="captinv_run")
            with gr.Column(elem_id="captinv_output"):
                gr.HTML(elem_id="captinv_progress")
                components.info = gr.HTML(elem_id="captinv_info")
                components.chips = gr.HTML(elem_id="captinv_chips")
                components.preview = gr.Image(label="Preview", interactive=False, elem_id="captinv_preview")
                components.loss = gr.HTML(elem_id="captinv_loss")
    return blocks, components


def chips_html(combined: str, words: list[str], sentence: str) -> str:
    """Clickable names: a click appends the name to the txt2img prompt (javascript/captinv.js)."""

    def chip(name: str, extra: str = "") -> str:
        quoted = html.escape(name, quote=True)
        return (
            f'<button class="captinv-chip{extra}" title="Add to the txt2img prompt" '
            f"onclick=\"captinv.sendToPrompt('{quoted}')\">{quoted}</button>"
        )

    return (
        '<div class="captinv-chips">'
        f"{chip(combined, ' captinv-combined')}{''.join(chip(word) for word in words)}"
        f'<p class="captinv-sentence">{html.escape(sentence)}</p></div>'
    )


def loss_svg(losses: list[float], width: int = 320, height: int = 120) -> str:
    """The loss per step as a small inline SVG (no plotting dependency in the WebUI)."""
    if len(losses) < 2:
        return ""
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0
    points = " ".join(
        f"{i * width / (len(losses) - 1):.1f},{height - (value - low) / span * height:.1f}"
        for i, value in enumerate(losses)
    )
    return (
        f'<svg class="captinv-loss" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{points}"/></svg>'
        f"<div>loss {losses[0]:.4f} → {losses[-1]:.4f} over {len(losses)} steps</div>"
    )


def message_html(text: str, *, error: bool = False) -> str:
    return f'<div class="{"error" if error else "captinv-message"}">{html.escape(text)}</div>'
