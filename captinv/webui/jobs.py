"""One captioning, inversion or Perfusion job inside a WebUI, shared by the tab and the API.

Host-free: everything that lives in the WebUI process comes from the `Host`. The
caller holds the WebUI's queue (the tab through `Host.gpu_call`, the API through
`Host.run_queued`). Progress and interrupt go through the host; results are loaded
at once so the very next txt2img prompt can use them.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from captinv import names
from captinv.captioning import init_source
from captinv.config import InvertConfig, PerfusionOptions
from captinv.hosts.base import Host
from captinv.images import load_image
from captinv.inversion import InvertResult, invert
from captinv.perfusion.covariance import CovarianceCache
from captinv.perfusion.training import PerfusionResult, text_covariance, train_concept
from captinv.webui.cards import write_cards
from captinv.webui.perfusion_tag import perfusion_tag


def _config(host: Host, values: dict[str, Any], source: str, text: str | None) -> InvertConfig:
    init = source if source in ("caption", "classify", "text") else "caption"
    return InvertConfig.from_mapping(
        {
            "captioner": host.option("captinv_blip_model"),
            "classifier": host.option("captinv_classifier_model"),
            "steps": int(host.option("captinv_default_steps")),
            "learning_rate": float(host.option("captinv_default_learning_rate")),
        }
        | values
        | {"init": init, "text": text or None}
    )


def caption(host: Host, image: Any, source: str) -> str:
    images = [load_image(image)]
    if source == "webui-blip":
        return host.webui_caption(images)
    return init_source(_config(host, {}, source, None), host.caption_device).describe(images)


def _prepare(host: Host, image: Any, text: str | None, source: str) -> tuple[Image.Image, str]:
    host.check_supported()
    photo = load_image(image)
    if not (text or "").strip():
        text = caption(host, photo, source)
    return photo, text


def _base(name: str | None) -> str:
    return names.base_name(name) if (name or "").strip() else "captinv"


def run_inversion(
    host: Host,
    image: Any,
    text: str | None,
    name: str | None,
    values: dict[str, Any],
    source: str = "caption",
) -> tuple[InvertResult, Image.Image | None]:
    photo, text = _prepare(host, image, text, source)
    config = _config(host, values, source, text)
    with host.training_backend() as backend:
        result = invert(
            backend,
            [photo],
            text,
            config,
            host.embeddings_dir,
            base=_base(name),
            callbacks=host.training_callbacks(config.steps),
        )
        resolution = config.resolution or backend.default_resolution
    host.load_new_embeddings()
    preview = None
    if host.option("captinv_preview"):
        preview = host.render_preview(f"a photo of {result.combined_name}", config.seed, resolution)
    if host.option("captinv_card_files"):
        # the combined name's card shows what it generates; a word's card, the photo it came from
        pictures = {name: photo for name in result.word_names} | {result.combined_name: preview or photo}
        write_cards(result.files[0].parent, pictures, f"captinv: {result.sentence}")
    return result, preview


def run_perfusion(
    host: Host,
    image: Any,
    text: str | None,
    name: str | None,
    values: dict[str, Any],
    perfusion_values: dict[str, Any],
    source: str = "caption",
) -> tuple[PerfusionResult, Image.Image | None]:
    """Train a concept into models/perfusion; the text-encoding covariance is estimated once per model."""
    photo, text = _prepare(host, image, text, source)
    config, options = _config(host, values, source, text), PerfusionOptions.from_mapping(perfusion_values)
    callbacks = host.training_callbacks(config.steps)

    def covariance_progress(done: int, total: int) -> None:
        host.set_status(f"captinv: text-encoding covariance, {done}/{total} prompts (once per model)")

    with host.training_backend() as backend:
        covariance = text_covariance(
            backend,
            options,
            CovarianceCache(host.covariance_dir),
            progress=covariance_progress,
            should_stop=callbacks.should_stop,
        )
        result = train_concept(
            backend,
            [photo],
            text,
            config,
            options,
            host.concepts_dir,
            name=_base(name),
            covariance=covariance,
            callbacks=callbacks,
        )
        resolution = config.resolution or backend.default_resolution
    host.reset_conditioning_cache()
    preview = None
    if host.option("captinv_preview"):
        prompt = f"a photo of {result.sentence} {perfusion_tag(result.name, options.beta)}"
        preview = host.render_preview(prompt, config.seed, resolution)
    if host.option("captinv_card_files"):
        description = f"captinv Perfusion, keys locked to '{result.superclass}': {result.sentence}"
        write_cards(result.path.parent, {result.name: preview or photo}, description)
    return result, preview
