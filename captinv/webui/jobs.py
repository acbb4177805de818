"""One captioning, inversion or Perfusion job inside a WebUI, shared by the tab and the API.

Host-free: everything that lives in the WebUI process comes from the `Host`. The
caller holds the WebUI's queue (the tab through `Host.gpu_call`, the API through
`Host.run_queued`). Progress and interrupt go through the host; results are loaded
at once so the very next txt2img prompt can use them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from captinv import names
from captinv.backends.base import Vectors
from captinv.captioning import init_source
from captinv.config import InvertConfig, PerfusionOptions
from captinv.continuing import read_set
from captinv.errors import CaptinvError, CaptionError, ConfigError, ModelLoadError, option
from captinv.hosts.base import Host
from captinv.images import ImageSource, load_images
from captinv.inversion import InvertResult, invert
from captinv.perfusion.covariance import Covariance, CovarianceCache, CovarianceProgress
from captinv.perfusion.training import PerfusionResult, check_concept_inputs, text_covariance, train_concept
from captinv.trainer import Callbacks, Progress
from captinv.webui.cards import Card, inversion_cards, training_note, write_cards
from captinv.webui.options import WebUIOptions
from captinv.webui.perfusion_tag import perfusion_tag


@dataclass
class LiveRun:
    """What the tab's live display polls (`GET /captinv/v1/progress`): the running job's phase
    and its losses so far."""

    phase: str = ""
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "losses": [x if math.isfinite(x) else None for x in self.losses]}


live = LiveRun()


def _phase(host: Host, text: str) -> None:
    live.phase = text
    host.set_status(f"captinv: {text}")


def _callbacks(host: Host, total: int, seed: int, resolution: int) -> Callbacks:
    """The host's progress callbacks, also recording the losses for the live display; the
    preview counts as one more job, so the bar reaches 100 % only after it."""
    callbacks = host.training_callbacks(total, after=1 if host.option("captinv_preview") else 0)
    report = callbacks.progress
    live.losses = []

    def progress(update: Progress) -> None:
        live.phase = f"step {update.step}/{update.total}"
        live.losses.append(update.loss)
        if report is not None:
            report(update)

    every = int(host.option("captinv_live_preview_every") or 0)
    return dataclasses.replace(
        callbacks,
        progress=progress,
        preview=_live_preview(host, seed, resolution),
        preview_every=max(every, 0),
    )


def _live_preview(host: Host, seed: int, resolution: int):
    """Every N steps: the words learned so far, rendered and shown as the WebUI's live preview."""

    def preview(step: int, vectors: dict[str, Vectors]) -> None:
        for name, rows in vectors.items():
            host.register_embedding(name, rows)  # the run's own registration comes back next step
        image = host.render_preview(f"a photo of {' '.join(vectors)}", seed, resolution)
        if image is not None:
            host.show_live_preview(image)

    return preview


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


def needs_typed_caption(error: CaptinvError) -> bool:
    """Whether the user's way out is typing the caption: no captioner could run."""
    return isinstance(error, (CaptionError, ModelLoadError))


def caption(host: Host, sources: list[ImageSource], source: str) -> str:
    """The caption of the first photo from `source` ("webui-blip", "caption", "classify")."""
    images = load_images(sources[:1])
    if source == "webui-blip":
        return host.webui_caption(images)
    if source == "text":
        raise CaptionError("'My own text' is selected: type the caption.")
    return init_source(_config(host, {}, source, None), host.caption_device).describe(images)


def _prepare(
    host: Host, sources: list[ImageSource], text: str | None, source: str, values: dict[str, Any]
) -> tuple[list[Image.Image], InvertConfig]:
    """Everything checked before the model is touched: host and model, options, photos; then the
    caption when none was typed."""
    host.check_supported()
    config = _config(host, values, source, text)
    photos = load_images(sources)
    if config.start_from is not None:  # a second round keeps the set's own caption
        config = dataclasses.replace(config, text=init_source(config).describe(photos))
    elif not (text or "").strip():
        _phase(host, "captioning the first photo")
        config = dataclasses.replace(config, text=caption(host, photos, source))
    return photos, config


def stored_set(host: Host, name: str) -> Path:
    """The file of the embedding `name` in the embeddings folder (any subfolder): the set a second
    round of training continues. Only files there can be named, so a request names no other path."""
    found = sorted(path for path in host.embeddings_dir.rglob("*.safetensors") if path.stem == name)
    if not found:
        raise ConfigError(
            f"There is no embedding named '{name}' to continue from: give the name of a captinv set's "
            "combined embedding (NAME-all).",
            field="continue_from",
        )
    return found[0]


def stored_set_options(host: Host, name: str) -> dict[str, Any]:
    """What the tab fills in to continue the set `name`: its caption and the options it was trained
    with (from the file's metadata)."""
    stored = read_set(stored_set(host, name))
    options = {key: stored.metadata[key] for key in ("learning_rate", "seed") if key in stored.metadata}
    return {"name": name, "caption": stored.caption, "steps": stored.steps, "options": options}


def free_default_name(host: Host, stem: str, *, perfusion: bool) -> str:
    """`stem` made a name, or `stem-2`, `stem-3`, ... when an earlier run has it: a default name
    never fails for being taken (a name the user gives still does, with how to overwrite)."""
    base = names.base_name(stem)
    for number in itertools.count(1):
        candidate = base if number == 1 else f"{base}-{number}"
        taken = (
            host.concept_path(candidate).exists()
            if perfusion
            else (host.embeddings_dir / "captinv" / candidate).exists()
            or (host.embeddings_dir / f"{names.combined_name(candidate)}.safetensors").exists()
        )
        if not taken:
            return candidate
    raise AssertionError("unreachable")


def _base(name: str | None, sources: list[ImageSource]) -> str:
    """The user's name, else the first photo's file name."""
    if (name or "").strip():
        return names.base_name(name)
    first = sources[0] if sources else None
    if isinstance(first, (str, Path)):
        return names.base_name(Path(first).stem)
    return "captinv"


def _preview(host: Host, prompt: str, config: InvertConfig, resolution: int) -> Image.Image | None:
    """The preview, counted as the run's last phase so the bar reaches 100 % only after it."""
    if not host.option("captinv_preview"):
        return None
    _phase(host, "rendering the preview")
    return host.render_preview(prompt, config.seed, resolution)


def run_inversion(
    host: Host,
    sources: list[ImageSource],
    text: str | None,
    name: str | None,
    values: dict[str, Any],
    source: str = "caption",
    webui: WebUIOptions | None = None,
) -> tuple[InvertResult, Image.Image | None]:
    webui = webui or WebUIOptions()
    if webui.continue_from is not None:
        values = values | {"start_from": str(stored_set(host, webui.continue_from))}
    photos, config = _prepare(host, sources, text, source, values)
    base = _base(name, sources)
    _phase(host, f"encoding {len(photos)} photo(s) and planning the words")
    with host.training_backend(keep_networks=webui.keep_active_networks) as backend:
        resolution = config.resolution or backend.default_resolution
        result = invert(
            backend,
            photos,
            config.text,
            config,
            host.embeddings_dir / "captinv" / base,
            base=base,
            callbacks=_callbacks(host, config.steps, config.seed, resolution),
        )
        context = backend.run_metadata()
    host.load_new_embeddings()
    # with networks kept for the run, the preview uses them too
    prompt = f"a photo of {result.combined_name} {context.get('webui_networks', '')}".strip()
    preview = _preview(host, prompt, config, resolution)
    if host.option("captinv_card_files"):
        words = dict(zip(result.word_names, result.trained_words))
        cards = inversion_cards(
            result.combined_name, words, result.text, photos[0], preview, training_note(context)
        )
        write_cards(result.files[0].parent, cards)
    return result, preview


def run_perfusion(
    host: Host,
    sources: list[ImageSource],
    text: str | None,
    name: str | None,
    values: dict[str, Any],
    perfusion_values: dict[str, Any],
    source: str = "caption",
    webui: WebUIOptions | None = None,
) -> tuple[PerfusionResult, Image.Image | None]:
    """Train a concept into models/perfusion; the text-encoding covariance is estimated once per model."""
    options = PerfusionOptions.from_mapping(perfusion_values)
    if webui is not None and webui.continue_from is not None:
        raise ConfigError(
            f"{option('continue_from')} continues a caption-inversion set; a Perfusion concept starts anew.",
            field="continue_from",
        )
    photos, config = _prepare(host, sources, text, source, values)
    base = _base(name, sources)
    check_concept_inputs(config.text, base, config, options, host.concepts_dir)

    def covariance_progress(progress: CovarianceProgress) -> None:
        _phase(
            host,
            f"text-encoding covariance (once per model): {progress.prompts} of about {progress.expected} "
            f"prompts, {progress.eta:.0f} s left",
        )

    with host.training_backend(keep_networks=(webui or WebUIOptions()).keep_active_networks) as backend:
        resolution = config.resolution or backend.default_resolution
        callbacks = _callbacks(host, config.steps, config.seed, resolution)

        def covariance() -> Covariance:  # estimated only once the run's checks have passed
            estimate = text_covariance(
                backend,
                options,
                CovarianceCache(host.covariance_dir),
                progress=covariance_progress,
                should_stop=callbacks.should_stop,
            )
            _phase(host, f"encoding {len(photos)} photo(s) and probing the concept word")
            return estimate

        result = train_concept(
            backend,
            photos,
            config.text,
            config,
            options,
            host.concepts_dir,
            name=base,
            covariance=covariance,
            callbacks=callbacks,
        )
    host.reset_conditioning_cache()
    prompt = f"a photo of {result.sentence} {perfusion_tag(result.name, options.beta)}"
    preview = _preview(host, prompt, config, resolution)
    if host.option("captinv_card_files"):
        description = f"captinv Perfusion, keys locked to '{result.superclass}': {result.sentence}. {result.selectivity}"
        write_cards(result.path.parent, [Card(result.name, preview or photos[0], description)])
    return result, preview
