"""Encode the training image(s) once, and only keep latents that are finite.

The VAE costs as much as a large share of a UNet step at 512 px; re-encoding a
fixed image every step (as the diffusers example does) buys nothing. Each
image is encoded as its centre square, optionally mirrored, plus any random
crops, and steps draw from this cache.

A VAE can overflow in half precision (SDXL's does in float16) and return
NaN/inf latents. Cached, they would poison every step and the run would end in
"lower the learning rate"; they are retried at the backend's higher VAE
precision and refused with the backend's advice if that fails too.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from PIL import Image

from captinv.backends.base import ModelBackend
from captinv.config import FlipMode
from captinv.errors import NonFiniteLatentsError
from captinv.images import square_crops, to_pixels

log = logging.getLogger(__name__)

# Words a mirror image contradicts: "a dog on the left" flipped is a dog on the right.
_SIDE_WORD = re.compile(
    r"\b(?:left|right)(?:[- ]?(?:hand(?:ed)?|side|most|wards?|facing))?\b|"
    r"\b(?:counter-?|anti-?)?clockwise\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class FlipChoice:
    """Whether a run also trains on the mirrored image, and why (shown to the user)."""

    enabled: bool
    reason: str

    def describe(self) -> str:
        return f"horizontal flip {'on' if self.enabled else 'off'}: {self.reason}"


def choose_flip(setting: FlipMode, text: str) -> FlipChoice:
    """`auto` flips unless the init text names a side; `on`/`off` are the user's word."""
    if setting != "auto":
        return FlipChoice(setting == "on", f"--{'' if setting == 'on' else 'no-'}flip was given")
    side = _SIDE_WORD.search(text)
    if side:
        return FlipChoice(False, f"the init text says {side.group(0)!r} (--flip to mirror anyway)")
    return FlipChoice(True, "the init text names no side (--no-flip to keep the image as it is)")


def encode_finite(backend: ModelBackend, pixels: torch.Tensor) -> torch.Tensor:
    """`backend.encode_images`, retried at a higher VAE precision when the latents are not all finite."""
    latents = backend.encode_images(pixels)
    if torch.isfinite(latents).all():
        return latents
    log.warning("The VAE returned NaN/inf latents; encoding again at a higher precision.")
    retried = backend.encode_images_upcast(pixels)
    if retried is not None and torch.isfinite(retried).all():
        return retried
    tried = "" if retried is None else " at its higher precision too"
    raise NonFiniteLatentsError(
        f"The VAE turned the image into NaN/inf latents{tried}, so nothing can be learned from them. "
        f"{backend.vae_advice}"
    )


def build_latent_cache(
    backend: ModelBackend,
    images: list[Image.Image],
    resolution: int,
    *,
    flip: bool,
    random_crops: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """[K, C, h, w] float32 latents on the backend's device, K = images x crops x flips."""
    pixels = [
        to_pixels(image, box, resolution, mirrored)
        for image in images
        for box in square_crops(image, random_crops, generator)
        for mirrored in ((False, True) if flip else (False,))
    ]
    return encode_finite(backend, torch.stack(pixels)).to(backend.device, torch.float32)


def sample_draws(
    latents: torch.Tensor, count: int, num_timesteps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0, noise, t) for `count` draws; random numbers come from a CPU generator for reproducibility."""
    index = torch.randint(0, latents.shape[0], (count,), generator=generator)
    timesteps = torch.randint(0, num_timesteps, (count,), generator=generator)
    noise = torch.randn((count, *latents.shape[1:]), generator=generator)
    return latents[index.to(latents.device)], noise.to(latents.device), timesteps.to(latents.device)
