"""One captioning or inversion job inside the WebUI, shared by the tab and the API.

The caller holds the WebUI's queue lock (the tab through `wrap_gradio_gpu_call`,
the API itself). Progress and interrupt go through `shared.state`; results are
registered at once so the very next txt2img prompt can use them.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from modules import devices, processing, sd_hijack, shared
from PIL import Image

from captinv import names
from captinv.captioning import init_source
from captinv.config import InvertConfig, PerfusionOptions
from captinv.errors import CaptionError
from captinv.images import load_image
from captinv.inversion import InvertResult, invert
from captinv.perfusion.covariance import CovarianceCache
from captinv.perfusion.training import PerfusionResult, text_covariance, train_concept
from captinv.trainer import Callbacks, Progress
from captinv.webui.backend import WebUIBackend, check_supported
from captinv.webui.perfusion_network import TAG, concepts_dir, covariance_dir
from captinv.webui.settings import opt

log = logging.getLogger(__name__)


class WebUIBlip:
    """The WebUI's own BLIP (models/BLIP), without its CLIP ranking and without touching `shared.state`."""

    def describe(self, images: list[Image.Image]) -> str:
        interrogator = shared.interrogator
        if interrogator.blip_model is None:
            interrogator.blip_model = interrogator.load_blip_model()
        model = interrogator.blip_model.to(devices.device_interrogate)
        interrogator.dtype = next(model.parameters()).dtype
        try:
            caption = interrogator.generate_caption(images[0])
        finally:
            interrogator.send_blip_to_ram()
            devices.torch_gc()
        if not caption.strip():
            raise CaptionError("The WebUI's BLIP returned an empty caption; type the init text instead.")
        return caption.strip()


def _config(values: dict[str, Any], source: str, text: str | None) -> InvertConfig:
    init = source if source in ("caption", "classify", "text") else "caption"
    return InvertConfig.from_mapping(
        {
            "captioner": opt("captinv_blip_model"),
            "classifier": opt("captinv_classifier_model"),
            "steps": int(opt("captinv_default_steps")),
            "learning_rate": float(opt("captinv_default_learning_rate")),
        }
        | values
        | {"init": init, "text": text or None}
    )


def caption(image: Any, source: str) -> str:
    images = [load_image(image)]
    if source == "webui-blip":
        return WebUIBlip().describe(images)
    return init_source(_config({}, source, None), str(devices.device_interrogate)).describe(images)


def embeddings_dir() -> Path:
    return Path(shared.cmd_opts.embeddings_dir)


def _state_callbacks(total: int) -> Callbacks:
    shared.state.job_count = total
    shared.state.job = "captinv"

    def progress(update: Progress) -> None:
        shared.state.job_no = update.step
        shared.state.textinfo = f"captinv: step {update.step}/{update.total}, loss {update.loss:.4f}"

    return Callbacks(progress=progress, should_stop=lambda: bool(shared.state.interrupted))


def refresh_embeddings() -> None:
    """Reload the database and forget cached conditioning, so an identical prompt is re-encoded."""
    sd_hijack.model_hijack.embedding_db.load_textual_inversion_embeddings(force_reload=True)
    processing.StableDiffusionProcessing.cached_c = [None, None]
    processing.StableDiffusionProcessing.cached_uc = [None, None]


def _preview(prompt: str, seed: int, resolution: int) -> Image.Image | None:
    p = processing.StableDiffusionProcessingTxt2Img(
        sd_model=shared.sd_model,
        prompt=prompt,
        steps=opt("captinv_preview_steps"),
        width=resolution,
        height=resolution,
        seed=seed,
        cfg_scale=7.0,
        do_not_save_samples=True,
        do_not_save_grid=True,
    )
    try:
        return processing.process_images(p).images[0]
    except Exception:  # a failed preview must not lose a finished inversion
        log.exception("captinv: preview failed")
        return None
    finally:
        p.close()


def _write_atomically(path: Path, content: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(content)
    temp.replace(path)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_cards(folder: Path, pictures: dict[str, Image.Image], description: str) -> None:
    """Extra Networks card files, `<name>.preview.png` and `<name>.description.txt`, per name."""
    for name, image in pictures.items():
        _write_atomically(folder / f"{name}.preview.png", _png(image))
        _write_atomically(folder / f"{name}.description.txt", f"{description}\n".encode())


def _prepare(image: Any, text: str | None, source: str) -> tuple[Image.Image, str]:
    check_supported()
    photo = load_image(image)
    if not (text or "").strip():
        text = caption(photo, source)
    return photo, text


def _base(name: str | None) -> str:
    return names.base_name(name) if (name or "").strip() else "captinv"


def run_inversion(
    image: Any, text: str | None, name: str | None, values: dict[str, Any], source: str = "caption"
) -> tuple[InvertResult, Image.Image | None]:
    photo, text = _prepare(image, text, source)
    config = _config(values, source, text)
    backend = WebUIBackend()
    result = invert(
        backend,
        [photo],
        text,
        config,
        embeddings_dir(),
        base=_base(name),
        callbacks=_state_callbacks(config.steps),
    )
    refresh_embeddings()
    preview = None
    if opt("captinv_preview"):
        preview = _preview(
            f"a photo of {result.combined_name}", config.seed, config.resolution or backend.default_resolution
        )
    if opt("captinv_card_files"):
        # the combined name's card shows what it generates; a word's card, the photo it came from
        pictures = {name: photo for name in result.word_names} | {result.combined_name: preview or photo}
        _write_cards(result.files[0].parent, pictures, f"captinv: {result.sentence}")
    return result, preview


def perfusion_tag(name: str, beta: float) -> str:
    return f"<{TAG}:{name}:{beta:g}>"


def run_perfusion(
    image: Any,
    text: str | None,
    name: str | None,
    values: dict[str, Any],
    perfusion_values: dict[str, Any],
    source: str = "caption",
) -> tuple[PerfusionResult, Image.Image | None]:
    """Train a concept into models/perfusion; the text-encoding covariance is estimated once per model."""
    photo, text = _prepare(image, text, source)
    config, options = _config(values, source, text), PerfusionOptions.from_mapping(perfusion_values)
    backend = WebUIBackend()
    callbacks = _state_callbacks(config.steps)

    def covariance_progress(done: int, total: int) -> None:
        shared.state.textinfo = f"captinv: text-encoding covariance, {done}/{total} prompts (once per model)"

    covariance = text_covariance(
        backend,
        options,
        CovarianceCache(covariance_dir()),
        progress=covariance_progress,
        should_stop=callbacks.should_stop,
    )
    result = train_concept(
        backend,
        [photo],
        text,
        config,
        options,
        concepts_dir(),
        name=_base(name),
        covariance=covariance,
        callbacks=callbacks,
    )
    processing.StableDiffusionProcessing.cached_c = [None, None]
    preview = None
    if opt("captinv_preview"):
        prompt = f"a photo of {result.sentence} {perfusion_tag(result.name, options.beta)}"
        preview = _preview(prompt, config.seed, config.resolution or backend.default_resolution)
    if opt("captinv_card_files"):
        description = f"captinv Perfusion, keys locked to '{result.superclass}': {result.sentence}"
        _write_cards(result.path.parent, {result.name: preview or photo}, description)
    return result, preview
