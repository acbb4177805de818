"""The API calls the host-tier tests make, with the small sizes that keep a CPU run short."""

from __future__ import annotations

import base64
import io

from PIL import Image

from tests.webui.photo import chelsea_b64

# A learning rate whose one AdamW step (about the rate itself per component) moves no float32 row:
# 1e-12 still moved the few components under ~2e-5 in size by an ulp, and one SDXL pixel with them.
UNMOVED = 1e-30

# sampler and scheduler both named: the WebUI logs no "autocorrection"
TXT2IMG = {
    "steps": 2,
    "width": 64,
    "height": 64,
    "seed": 11,
    "sampler_name": "Euler",
    "scheduler": "Automatic",
}


def txt2img_info(server, prompt: str) -> tuple[bytes, str]:
    """The pixels and the infotext JSON of a 64 px, 2-step image with a fixed seed. Pixels, not the
    PNG: its text chunk holds the prompt, so two prompts never give equal files."""
    status, body = server.call("/sdapi/v1/txt2img", {"prompt": prompt} | TXT2IMG)
    assert status == 200, body
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    return image.convert("RGB").tobytes(), body["info"]


def txt2img(server, prompt: str) -> bytes:
    return txt2img_info(server, prompt)[0]


def invert(server, name: str, **options) -> tuple[int, dict]:
    """Invert chelsea as "a tabby cat" in 4 steps at 64 px, unless `options` say otherwise."""
    body = {"image": chelsea_b64(), "caption": "a tabby cat", "name": name, "steps": 4, "resolution": 64}
    return server.call("/captinv/v1/invert", body | options)


def perfusion(server, name: str, caption: str, **options) -> tuple[int, dict]:
    """A Perfusion concept of chelsea in 3 steps at 64 px, on a 64-prompt covariance."""
    body = {"image": chelsea_b64(), "caption": caption, "name": name, "steps": 3, "resolution": 64}
    return server.call("/captinv/v1/perfusion", body | {"covariance_prompts": 64} | options)


def run_folder(server, base: str):
    """Where a run named `base` writes its set: its own folder, shown as a filter in Extra Networks."""
    return server.data / "embeddings" / "captinv" / base
