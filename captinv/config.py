"""One validated description of an inversion run.

The CLI flags, the WebUI tab's controls and the API's request fields are all
derived from `InvertConfig`'s fields and their metadata, so a new option is
added here once and appears everywhere with the same default and help text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from captinv.errors import ConfigError

InitMode = Literal["caption", "classify", "text"]
TemplateSet = Literal["object", "style", "none"]
Schedule = Literal["constant", "linear", "cosine"]
KeyLock = Literal["local", "global"]

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-large"
DEFAULT_CLASSIFIER = "google/vit-base-patch16-224"
# The CLIP text encoders take 77 positions: BOS, EOS and 75 for the prompt.
MAX_VECTORS = 75


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


_T = TypeVar("_T", bound="_Options")


class _Options:
    """Checks and conversions shared by the option dataclasses, driven by their fields' metadata."""

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, spec.name)
            choices = spec.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{spec.name} must be one of {', '.join(choices)}; got {value!r}.")
            minimum = spec.metadata.get("minimum")
            if minimum is not None and value is not None and not value >= minimum:
                raise ConfigError(f"{spec.name} must be at least {minimum}; got {value!r}.")
            maximum = spec.metadata.get("maximum")
            if maximum is not None and value is not None and not value <= maximum:
                raise ConfigError(f"{spec.name} must be at most {maximum}; got {value!r}.")

    @classmethod
    def from_mapping(cls: type[_T], values: dict[str, Any]) -> _T:
        """Build from a request/UI dict, refusing unknown keys instead of ignoring them."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown option(s): {', '.join(unknown)}.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class InvertConfig(_Options):
    """Options of one inversion. Defaults follow the captioning-initialisation paper."""

    init: InitMode = _opt(
        "caption",
        "Where the starting words come from: BLIP caption (or the image's .txt caption file), a classifier's "
        "label, or --text.",
        choices=("caption", "classify", "text"),
    )
    text: str | None = _opt(
        None,
        "Init text. With --init text it is required (use one word, or '*', for classic textual "
        "inversion); with caption/classify it replaces the generated text.",
    )
    name: str | None = _opt(None, "Base name of the new embeddings (default: the first image's file name).")
    steps: int = _opt(
        100, "Optimisation steps. ~100 with caption init; classic TI needs thousands.", minimum=1
    )
    learning_rate: float = _opt(0.005, "AdamW learning rate of the new vectors.", minimum=0.0)
    lr_schedule: Schedule = _opt(
        "constant", "Learning-rate schedule after warm-up.", choices=("constant", "linear", "cosine")
    )
    warmup_steps: int = _opt(0, "Linear learning-rate warm-up steps.", minimum=0)
    batch_size: int = _opt(
        4, "Noise draws (timestep, noise, prompt) of the image(s) per step, in one model call.", minimum=1
    )
    templates: TemplateSet = _opt(
        "object",
        "Prompt templates around the pseudo-words: object ('a photo of a {}'), style, or none.",
        choices=("object", "style", "none"),
    )
    vectors_per_word: int | None = _opt(
        None, "Vectors per word (default: one per BPE token of the word).", minimum=1
    )
    train_function_words: bool = _opt(
        True,
        "Train function words (a, the, on, ...) too, as the paper does. When off they stay plain words.",
    )
    init_l2: float = _opt(0.0, "Weight of an L2 pull of each vector toward its initial value.", minimum=0.0)
    resolution: int | None = _opt(None, "Training resolution in pixels (default: the model's).", minimum=64)
    flip: bool = _opt(True, "Also train on the horizontally flipped image.")
    random_crops: int = _opt(0, "Extra random square crops per image, encoded once.", minimum=0)
    max_grad_norm: float | None = _opt(
        1.0, "Clip the vectors' gradient norm (none: no clipping).", minimum=0.0
    )
    seed: int = _opt(0, "Random seed; a run is reproducible for the same seed, model and device.")
    mixed_precision: bool = _opt(
        True, "On a GPU, run the frozen model in half precision (vectors stay fp32)."
    )
    gradient_checkpointing: bool = _opt(
        False, "Recompute activations in backward: less memory, ~30% slower. For small GPUs."
    )
    overwrite: bool = _opt(False, "Replace existing embeddings of the same names.")
    captioner: str = _opt(DEFAULT_CAPTIONER, "BLIP model id or local path for --init caption.")
    classifier: str = _opt(DEFAULT_CLASSIFIER, "Image-classification model id or path for --init classify.")
    caption_beams: int = _opt(3, "Beam width of caption decoding.", minimum=1)
    caption_max_tokens: int = _opt(30, "Longest caption, in generated tokens.", minimum=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init == "text" and not (self.text or "").strip():
            raise ConfigError("--init text needs the init text (for classic textual inversion use '*').")
        if self.warmup_steps >= self.steps and self.warmup_steps:
            raise ConfigError("warmup_steps must be smaller than steps.")


PERFUSION_DEFAULTS: dict[str, Any] = {"steps": 300, "batch_size": 4}
"""`InvertConfig` defaults a Perfusion run replaces: measured on the mini world (README, "Perfusion
concepts"), a concept needs more steps than a caption inversion, and its running i* (an average
that keeps 0.99^k of its start after k steps) still holds 37 % of the superclass after 100."""


@dataclass
class PerfusionOptions(_Options):
    """What a Perfusion run needs beyond `InvertConfig` (steps, batch, seed, templates...).

    Defaults follow the Perfusion paper: V targets learn at 0.03 while the
    concept's embedding learns at `InvertConfig.learning_rate`; the gate values
    and the key locking stored in the file are the inference defaults (β
    0.6-0.75 under local locking, 0.4-0.6 under global; lower is stronger).
    """

    superclass: str | None = _opt(
        None,
        "Super-category word the concept's keys are locked to, e.g. 'cat' (default: the init text's "
        "head noun).",
    )
    value_learning_rate: float = _opt(0.03, "Learning rate of the per-layer V targets.", minimum=0.0)
    beta: float = _opt(
        0.7,
        "Default inference gate bias stored with the concept (lower: stronger; 0.6-0.75 with local "
        "locking, 0.4-0.6 with global).",
        minimum=0.0,
        maximum=1.0,
    )
    tau: float = _opt(
        0.15, "Default inference gate temperature stored with the concept.", minimum=0.01, maximum=0.5
    )
    lock: KeyLock = _opt(
        "local",
        "Default key locking stored with the concept: local (keys locked where the concept word is) or "
        "global (every key from the prompt with the superclass in the concept's place: richer scenes, "
        "use β 0.4-0.6).",
        choices=("local", "global"),
    )
    covariance_captions: str | None = _opt(
        None,
        "Your own captions for the text-encoding covariance, mixed one to one with the generated "
        "corpus: a text file with one caption per line, or a folder of .txt caption files.",
    )
    covariance_prompts: int = _opt(
        5000,
        "Most prompts encoded to estimate the text-encoding covariance; it stops sooner once more "
        "prompts no longer change it (once per text encoder and corpus, then cached).",
        minimum=16,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.superclass is not None and len(self.superclass.split()) != 1:
            raise ConfigError(f"The superclass must be one word (got {self.superclass!r}).")
