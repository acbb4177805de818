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

from captinv.config import InvertConfig, PerfusionOptions
from captinv.errors import ImageError
from captinv.webui.options import WebUIOptions

# Options a request may not set: server-side model locations (settings decide them).
SERVER_ONLY = ("captioner", "classifier", "text")
SOURCES = ("caption", "webui-blip", "classify", "text")


def _value_type(hint: Any) -> Any:
    """The type a request field holds: `X | None` unwrapped, a `Literal` sent as its strings.

    A Literal's choices are checked by `InvertConfig.from_mapping` with a message that lists
    them; handing pydantic 1 the Literal's values as types breaks the OpenAPI document.
    """
    if typing.get_origin(hint) is typing.Union:
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    return str if typing.get_origin(hint) is typing.Literal else hint


def _optional_fields(options: type = InvertConfig) -> dict[str, Any]:
    hints = typing.get_type_hints(options)
    return {
        spec.name: (Optional[_value_type(hints[spec.name])], Field(None, description=spec.metadata["help"]))  # noqa: UP045
        for spec in dataclasses.fields(options)
        if spec.name not in SERVER_ONLY
    }


class CaptionRequest(BaseModel):
    image: str = Field(..., description="The photo, base64-encoded (a data: URL prefix is accepted).")
    source: str = Field("caption", description=f"One of {', '.join(SOURCES)}.")


class CaptionResponse(BaseModel):
    caption: str


_REQUEST_FIELDS: dict[str, Any] = {
    "image": (str, Field(..., description="The photo, base64-encoded (a data: URL prefix is accepted).")),
    "caption": (Optional[str], Field(None, description="Init text; generated from the image when absent.")),  # noqa: UP045
    "source": (
        str,
        Field("caption", description=f"Where a missing caption comes from: {', '.join(SOURCES)}."),
    ),
}
_OPTION_FIELDS = _optional_fields() | _optional_fields(WebUIOptions)
InvertRequest = create_model("InvertRequest", **_REQUEST_FIELDS, **_OPTION_FIELDS)
PerfusionRequest = create_model(
    "PerfusionRequest", **_REQUEST_FIELDS, **_OPTION_FIELDS, **_optional_fields(PerfusionOptions)
)


class InvertResponse(BaseModel):
    combined_name: str
    word_names: list[str]
    names: list[str]
    caption: str
    sentence: str
    files: list[str]
    losses: list[float]
    steps: int
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
    seconds: float


def decode_image(data: str) -> bytes:
    """Base64 (optionally a data: URL) -> bytes, or an `ImageError` that says what is wrong."""
    if not data:
        raise ImageError("No image given: send the photo base64-encoded in 'image'.")
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageError(f"'image' is not valid base64 ({err}).") from err


def config_values(request: BaseModel, options: type = InvertConfig) -> dict[str, Any]:
    """The request's options of one options dataclass that were actually given."""
    data = (
        request.dict()
        if hasattr(request, "dict") and not hasattr(request, "model_dump")
        else request.model_dump()
    )
    known = {f.name for f in dataclasses.fields(options)}
    return {key: value for key, value in data.items() if key in known and value is not None}
