"""Request and response models of the HTTP API, derived from `InvertConfig` and `PerfusionOptions`.

Works with pydantic 1 (the WebUI's fastapi 0.94) and 2. The API never takes a
path: images come as base64, model ids for captioners come from the WebUI's
settings, and names are sanitised by the core.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import typing
from typing import Any, Optional

from pydantic import BaseModel, Field, create_model

from captinv.config import INVERSION_ONLY, InvertConfig, PerfusionOptions
from captinv.errors import CaptinvError, ConfigError, ImageError, api_field
from captinv.webui.options import WEBUI_INVERSION_ONLY, WebUIOptions

# Options a request may not set: server-side paths and model locations (settings decide them; a
# request never names a file on the server: a set to continue is named by `continue_from`), the
# init text (`caption`) and its source (`source`), which have fields of their own.
SERVER_ONLY = ("captioner", "classifier", "covariance_captions", "start_from", "text", "init")
SOURCES = ("caption", "webui-blip", "classify", "text")


def _value_type(hint: Any) -> Any:
    """The type a request field holds: `X | None` unwrapped, a `Literal` sent as its strings.

    A Literal's choices are checked by `InvertConfig.from_mapping` with a message that lists
    them; handing pydantic 1 the Literal's values as types breaks the OpenAPI document.
    """
    if typing.get_origin(hint) is typing.Union:
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    return str if typing.get_origin(hint) is typing.Literal else hint


def _optional_fields(options: type = InvertConfig, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """One optional field per option, documented with its help and its default (OpenAPI)."""
    hints = typing.get_type_hints(options)
    return {
        spec.name: (
            Optional[_value_type(hints[spec.name])],  # noqa: UP045
            Field(None, description=f"{spec.metadata['help']} Default: {_default(spec)}."),
        )
        for spec in dataclasses.fields(options)
        if spec.name not in SERVER_ONLY + skip
    }


def _default(spec: dataclasses.Field) -> str:
    if spec.default is None:
        return spec.metadata.get("none") or "none"
    return str(spec.default).lower() if isinstance(spec.default, bool) else str(spec.default)


def _refused_fields(refused: typing.Mapping[str, str]) -> dict[str, Any]:
    """Fields a route names only to refuse them with a 400 that says where they belong (an unknown
    field would otherwise be dropped without a word)."""
    return {
        name: (Optional[Any], Field(None, description=f"Not here: {why}"))  # noqa: UP045
        for name, why in refused.items()
    }


_PERFUSION_ONLY = {
    spec.name: "a Perfusion option; send it to /captinv/v1/perfusion."
    for spec in dataclasses.fields(PerfusionOptions)
}
_INVERSION_ONLY = {
    name: "a caption-inversion option; send it to /captinv/v1/invert."
    for name in INVERSION_ONLY + WEBUI_INVERSION_ONLY
    if name not in SERVER_ONLY
}
_INIT = {"init": "the API takes the init text as 'caption' and where it comes from as 'source'."}
_PATH = {"start_from": "the API names the set to continue by 'continue_from' (its NAME-all), not by a path."}
REFUSED = {"invert": _PERFUSION_ONLY | _INIT | _PATH, "perfusion": _INVERSION_ONLY | _INIT | _PATH}
"""Per route, the fields it refuses and why."""


class CaptionRequest(BaseModel):
    image: str = Field(..., description="The photo, base64-encoded (a data: URL prefix is accepted).")
    source: str = Field("caption", description=f"One of {', '.join(SOURCES)}.")


class CaptionResponse(BaseModel):
    caption: str


_REQUEST_FIELDS: dict[str, Any] = {
    "image": (
        Optional[str],  # noqa: UP045
        Field(None, description="The photo, base64-encoded (a data: URL prefix is accepted); or `images`."),
    ),
    "images": (
        Optional[list[str]],  # noqa: UP045
        Field(
            None,
            description="Several photos of one subject, base64-encoded (classic textual inversion uses 3-5); "
            "the caption comes from the first.",
        ),
    ),
    "filename": (
        Optional[str],  # noqa: UP045
        Field(None, description="The first photo's file name: the default `name` (default: 'captinv')."),
    ),
    "caption": (Optional[str], Field(None, description="Init text; generated from the image when absent.")),  # noqa: UP045
    "source": (
        str,
        Field("caption", description=f"Where a missing caption comes from: {', '.join(SOURCES)}."),
    ),
}
InvertRequest = create_model(
    "InvertRequest",
    **_REQUEST_FIELDS,
    **_optional_fields(),
    **_optional_fields(WebUIOptions),
    **_refused_fields(REFUSED["invert"]),
)
PerfusionRequest = create_model(
    "PerfusionRequest",
    **_REQUEST_FIELDS,
    **_optional_fields(skip=INVERSION_ONLY),
    **_optional_fields(PerfusionOptions),
    **_optional_fields(WebUIOptions, skip=WEBUI_INVERSION_ONLY),
    **_refused_fields(REFUSED["perfusion"]),
)


class InvertResponse(BaseModel):
    combined_name: str
    word_names: list[str]
    names: list[str]
    caption: str
    sentence: str
    files: list[str]
    losses: list[float]
    steps: int  # steps trained
    max_steps: int  # the limit asked for
    stop_reason: str  # max_steps, converged (auto-stop) or stopped (Stop & save: /sdapi/v1/skip)
    seconds: float


class PerfusionResponse(BaseModel):
    name: str
    superclass: str
    tag: str  # what to add to a prompt, e.g. <perfusion:kitty:0.7>
    caption: str
    sentence: str  # the caption with the superclass word replaced by the concept's name
    file: str
    size_bytes: int
    losses: list[float]
    steps: int
    max_steps: int
    stop_reason: str
    seconds: float


def check_refused(request: BaseModel, route: str) -> None:
    """A `ConfigError` (400) for a field that belongs to the other route or to `caption`/`source`."""
    for name in _given(request):
        if name in REFUSED[route] and getattr(request, name) is not None:
            raise ConfigError(f"'{name}' is {REFUSED[route][name]}", field=name)


def request_images(request: BaseModel) -> list[bytes]:
    """The photos of `image` or `images` (one of them), decoded."""
    image, images = getattr(request, "image", None), getattr(request, "images", None)
    if image and images:
        raise ImageError("Send the photo in 'image' or the photos in 'images', not both.")
    return [decode_image(data) for data in (images or [image])]


def decode_image(data: str) -> bytes:
    """Base64 (optionally a data: URL) -> bytes, or an `ImageError` that says what is wrong."""
    if not data:
        raise ImageError("No image given: send the photo base64-encoded in 'image' (or several in 'images').")
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageError(f"'image' is not valid base64 ({err}).") from err


def _given(request: BaseModel) -> dict[str, Any]:
    """The fields the request set (pydantic 1 and 2)."""
    if hasattr(request, "model_dump"):
        return request.model_dump(exclude_unset=True)
    return request.dict(exclude_unset=True)


def config_values(request: BaseModel, options: type = InvertConfig) -> dict[str, Any]:
    """The request's options of one options dataclass that were actually given.

    `null` means "the default" for an option that cannot be none, and "none" for one that can
    (`"max_grad_norm": null` turns clipping off).
    """
    hints = typing.get_type_hints(options)
    return {
        key: value
        for key, value in _given(request).items()
        if key in hints and (value is not None or type(None) in typing.get_args(hints[key]))
    }


def checked_options(request: BaseModel, options: type = InvertConfig) -> Any:
    """The request's options checked as a run will check them, before any work is queued: a bad
    value is a `ConfigError` (400) with the message the run would give."""
    values = config_values(request, options)
    if options is InvertConfig:
        values |= {"init": "caption"}  # the source decides; text comes as `caption`
    return options.from_mapping(values)


def error_detail(err: CaptinvError) -> str:
    """An error's message in the API's terms (`learning_rate`, `caption`), for the 4xx body."""
    return err.render(api_field)
