"""One validated description of an inversion run.

The CLI flags, the WebUI tab's controls and the API's request fields are all
derived from `InvertConfig`'s fields and their metadata, so a new option is
added here once and appears everywhere with the same default and help text.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from captinv import names
from captinv.errors import ConfigError, option

InitMode = Literal["caption", "classify", "text"]
TemplateSet = Literal["object", "style", "none"]
Schedule = Literal["constant", "linear", "cosine"]
FlipMode = Literal["auto", "on", "off"]
KeyLock = Literal["local", "global"]

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-large"
DEFAULT_CLASSIFIER = "google/vit-base-patch16-224"
# The CLIP text encoders take 77 positions: BOS, EOS and 75 for the prompt.
MAX_VECTORS = 75
MAX_SEED = 2**32 - 1  # the WebUI's seed range


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A field with its help text and limits: `choices`, `minimum`, `above` (exclusive), `maximum`,
    `multiple_of`, and for an optional field what `none` means."""
    return field(default=default, metadata={"help": help, **extra})


_T = TypeVar("_T", bound="_Options")


def _allowed(spec: dataclasses.Field, base: type) -> str:
    """What `spec` accepts, in words: "a finite number above 0", "a multiple of 64 from 64 to 4096"."""
    meta = spec.metadata
    if meta.get("choices"):
        return f"one of {', '.join(meta['choices'])}"
    words = {bool: "true or false", int: "a whole number", float: "a finite number", str: "text"}[base]
    if meta.get("multiple_of"):
        words = f"a multiple of {meta['multiple_of']}"
    low, high = meta.get("minimum"), meta.get("maximum")
    if meta.get("above") is not None:
        words += f" above {meta['above']}"
    if low is not None and high is not None:
        words += f" from {low} to {high}"
    elif low is not None:
        words += f" of at least {low}"
    elif high is not None:
        words += f" of at most {high}"
    if meta.get("none") and base is not str:
        words += f", or none for {meta['none']}"
    return words


def _checked(spec: dataclasses.Field, hint: Any, value: Any) -> Any:
    """`value` as the field stores it (an integral float becomes an int), or a `ConfigError`."""
    args = typing.get_args(hint)
    base = next((t for t in args if t is not type(None)), hint)
    base = str if typing.get_origin(base) is typing.Literal else base
    if value is None and type(None) in args:
        return None

    def refuse() -> ConfigError:
        if base is str and isinstance(value, str):
            instead = f" or leave it out for {spec.metadata['none']}" if spec.metadata.get("none") else ""
            return ConfigError(f"{option(spec.name)} is empty; type some text{instead}.", field=spec.name)
        return ConfigError(
            f"{option(spec.name)} must be {_allowed(spec, base)}; got {value!r}.", field=spec.name
        )

    if isinstance(value, bool) != (base is bool):
        raise refuse()
    if base is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if (
        base in (int, float)
        and not isinstance(value, (int, float))
        or base is int
        and isinstance(value, float)
    ):
        raise refuse()
    if base is float and not math.isfinite(value):
        raise refuse()
    if base is str and not (isinstance(value, str) and value.strip()):
        raise refuse()
    meta = spec.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise refuse()
    if base in (int, float) and (
        meta.get("minimum") is not None
        and value < meta["minimum"]
        or meta.get("above") is not None
        and value <= meta["above"]
        or meta.get("maximum") is not None
        and value > meta["maximum"]
        or meta.get("multiple_of")
        and value % meta["multiple_of"]
    ):
        raise refuse()
    return value


class _Options:
    """Checks and conversions shared by the option dataclasses, driven by their fields' metadata.

    Every option is checked here, once, whoever sets it (CLI, tab, API, Python), so a run
    never starts with a value that would fail, or silently do nothing, later.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for spec in dataclasses.fields(self):  # type: ignore[arg-type]
            setattr(self, spec.name, _checked(spec, hints[spec.name], getattr(self, spec.name)))

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
        none="a generated caption",
    )
    name: str | None = _opt(
        None, "Base name of the new embeddings (default: the first image's file name).", none="the file name"
    )
    steps: int = _opt(
        100,
        "Optimisation steps; with auto-stop the most it may take. ~100 with caption init; classic TI "
        "needs thousands.",
        minimum=1,
    )
    auto_stop: bool = _opt(
        True,
        "Stop before --steps once the loss on fixed noise draws has stopped improving (see "
        "docs/auto-stop.md); --no-auto-stop trains exactly --steps.",
    )
    learning_rate: float = _opt(0.005, "AdamW learning rate of the new vectors.", above=0)
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
        None,
        "Vectors per word (default: one per BPE token of the word). Fewer than its tokens start at the means "
        "of runs of consecutive tokens; more repeat the tokens.",
        minimum=1,
        maximum=MAX_VECTORS,
        none="one per token",
    )
    train_function_words: bool = _opt(
        True,
        "Train function words (a, the, on, ...) too, as the paper does. When off they stay plain words.",
    )
    init_l2: float = _opt(0.0, "Weight of an L2 pull of each vector toward its initial value.", minimum=0.0)
    resolution: int | None = _opt(
        None,
        "Training resolution in pixels (default: the model's).",
        multiple_of=64,
        minimum=64,
        maximum=4096,
        none="the model's",
    )
    flip: FlipMode = _opt(
        "auto",
        "Also train on the horizontally flipped image. auto: on unless the init text names a side (left, "
        "right, ...), which a mirror image would contradict. on/off decide.",
        choices=("auto", "on", "off"),
        negatable=True,
    )
    random_crops: int = _opt(0, "Extra random square crops per image, encoded once.", minimum=0)
    max_grad_norm: float | None = _opt(
        1.0, "Clip the vectors' gradient norm (none: no clipping).", above=0, none="no clipping"
    )
    seed: int = _opt(
        0,
        "Random seed; a run is reproducible for the same seed, model and device.",
        minimum=0,
        maximum=MAX_SEED,
    )
    mixed_precision: bool = _opt(
        True,
        "Run the frozen model in half precision under autocast, with loss scaling for float16; vectors stay "
        "float32. Headless: float16 on a GPU, and off loads the model in float32. In the WebUI the model's "
        "precision is the WebUI's (start it with --no-half for float32); off then needs a float32 model.",
    )
    gradient_checkpointing: bool = _opt(
        False, "Recompute activations in backward: less memory, ~30% slower. For small GPUs."
    )
    overwrite: bool = _opt(False, "Replace existing embeddings of the same names.")
    start_from: str | None = _opt(
        None,
        "Train a captinv set further: its combined file (NAME-all.safetensors). The words and their "
        "starting vectors come from it, not from a caption; name the new set (or --overwrite the old).",
        none="a new set from the caption",
    )
    captioner: str = _opt(DEFAULT_CAPTIONER, "BLIP model id or local path for --init caption.")
    classifier: str = _opt(DEFAULT_CLASSIFIER, "Image-classification model id or path for --init classify.")
    caption_beams: int = _opt(3, "Beam width of caption decoding.", minimum=1)
    caption_max_tokens: int = _opt(30, "Longest caption, in generated tokens.", minimum=1, maximum=512)

    def __post_init__(self) -> None:
        if isinstance(self.flip, bool):  # --flip/--no-flip, and requests written before "auto" existed
            self.flip = "on" if self.flip else "off"
        super().__post_init__()
        if self.init == "text" and self.text is None:
            raise ConfigError(
                f"{option('init')} text needs the init text in {option('text')} (for classic textual "
                "inversion use '*').",
                field="text",
            )
        if self.warmup_steps and self.warmup_steps >= self.steps:
            raise ConfigError(
                f"{option('warmup_steps')} ({self.warmup_steps}) must be smaller than {option('steps')} "
                f"({self.steps}).",
                field="warmup_steps",
            )
        if self.name is not None:
            names.base_name(self.name)


PERFUSION_DEFAULTS: dict[str, Any] = {"steps": 300, "batch_size": 4}
# Caption-inversion options with no meaning for a single concept word (the CLI, the tab and the API
# offer them for inversion only).
INVERSION_ONLY = ("vectors_per_word", "train_function_words", "start_from")
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
        none="the head noun",
    )
    value_learning_rate: float = _opt(0.03, "Learning rate of the per-layer V targets.", above=0)
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
        none="the generated corpus only",
    )
    covariance_prompts: int = _opt(
        5000,
        "Most prompts encoded to estimate the text-encoding covariance; it stops sooner once more "
        "prompts no longer change it (once per text encoder and corpus, then cached).",
        minimum=16,
        maximum=100_000,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.superclass is not None and len(self.superclass.split()) != 1:
            raise ConfigError(
                f"{option('superclass')} must be one word, e.g. 'cat'; got {self.superclass!r}.",
                field="superclass",
            )


@dataclass
class GenerateOptions(_Options):
    """Options of one rendered image (`captinv generate`, previews)."""

    steps: int = _opt(20, "Sampling steps.", minimum=1, maximum=1000)
    guidance: float = _opt(7.0, "Classifier-free guidance scale.", minimum=0)
    seed: int = _opt(0, "Random seed of the image.", minimum=0, maximum=MAX_SEED)
