"""Where the starting words come from: a caption, a class label, or the user.

Each source loads its model on first use and releases it right after, so a
captioner never sits in memory beside the diffusion model during training.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from captinv.config import InvertConfig
from captinv.continuing import check_text, read_set
from captinv.errors import CaptionError, ModelLoadError, option
from captinv.hub import ModelSource, locate

log = logging.getLogger(__name__)


class InitSource(Protocol):
    def describe(self, images: list[Image.Image]) -> str:
        """Init text for the images (the first image's, when there are several)."""


def _release(*objects: object) -> None:
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_FIX = {
    "captioner": f"Give a local BLIP folder with {option('captioner')}, or write the caption yourself "
    f"({option('text')}).",
    "classifier": f"Give a local classifier folder with {option('classifier')}, or write the init text "
    f"yourself ({option('text')}).",
}


def locate_model(model_id: str, what: str) -> ModelSource:
    """The captioner's or classifier's location, checked in a moment, before anything loads."""
    return locate(model_id, what=what, marker="config.json", fix=_FIX[what])


def _load(loader: Callable[..., object], model_id: str, what: str) -> object:
    source = locate_model(model_id, what)
    try:
        return loader(source.spec, **source.load_kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"Could not load the {what} {model_id!r} ({err}".splitlines()[0] + f"). {_FIX[what]}"
        ) from err


@dataclass
class BlipCaptioner:
    """BLIP image captioning through transformers (the paper's captioner)."""

    model_id: str
    beams: int = 3
    max_new_tokens: int = 30
    device: str = "cpu"

    @torch.no_grad()
    def describe(self, images: list[Image.Image]) -> str:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        processor = _load(BlipProcessor.from_pretrained, self.model_id, "captioner")
        model = _load(BlipForConditionalGeneration.from_pretrained, self.model_id, "captioner")
        try:
            model.to(self.device).eval()
            inputs = processor(images=images[0], return_tensors="pt").to(self.device)
            output = model.generate(**inputs, num_beams=self.beams, max_new_tokens=self.max_new_tokens)
            caption = processor.decode(output[0], skip_special_tokens=True).strip()
        finally:
            _release(model)
        if not caption:
            raise CaptionError("The captioner returned an empty caption; type the init text instead.")
        return caption


@dataclass
class ImageClassifier:
    """The top label of an image classifier (the paper's classification-initialisation variant)."""

    model_id: str
    device: str = "cpu"

    @torch.no_grad()
    def describe(self, images: list[Image.Image]) -> str:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        processor = _load(AutoImageProcessor.from_pretrained, self.model_id, "classifier")
        model = _load(AutoModelForImageClassification.from_pretrained, self.model_id, "classifier")
        try:
            model.to(self.device).eval()
            logits = model(**processor(images=images[0], return_tensors="pt").to(self.device)).logits
            label = model.config.id2label[int(logits[0].argmax())]
        finally:
            _release(model)
        # ImageNet labels list synonyms ("tabby, tabby cat"); the first is the common name.
        return label.split(",")[0].replace("_", " ").strip()


@dataclass
class PlainText:
    text: str

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise CaptionError("The init text is empty: type a word (or '*' for classic textual inversion).")

    def describe(self, images: list[Image.Image]) -> str:
        return self.text.strip()


SIDECAR_MAX_BYTES = 4096  # a caption, not a document; larger files are not read


def sidecar_caption(image: str | Path) -> Path | None:
    """`<image>.txt` beside the image, the caption convention of the WebUI's own trainer and of
    kohya's scripts, so a captioned dataset (or the mini world's examples) needs no captioner."""
    path = Path(image).with_suffix(".txt")
    return path if path.is_file() and path.stat().st_size <= SIDECAR_MAX_BYTES else None


def init_source(
    config: InvertConfig, device: str = "cpu", first_image: str | Path | None = None
) -> InitSource:
    """Typed text first; then, for caption init, a caption file beside the first image; then the
    captioner or classifier the config names, once it is known to be there (a missing one, or
    one not downloaded while the hub is away, is refused at once). A run that continues a set
    starts from the set's own caption."""
    if config.start_from is not None:
        stored = read_set(config.start_from)
        check_text(stored, config.text)
        return PlainText(stored.caption)
    if config.text is not None:
        return PlainText(config.text)
    sidecar = sidecar_caption(first_image) if first_image is not None and config.init == "caption" else None
    if sidecar is not None:
        text = sidecar.read_text(encoding="utf-8", errors="replace").strip()
        if not text:
            raise CaptionError(
                f"The caption file {sidecar.name} is empty: write the caption in it or delete it."
            )
        log.info("caption from %s", sidecar)
        return PlainText(text)
    if config.init == "classify":
        locate_model(config.classifier, "classifier")
        return ImageClassifier(config.classifier, device)
    locate_model(config.captioner, "captioner")
    return BlipCaptioner(config.captioner, config.caption_beams, config.caption_max_tokens, device)
