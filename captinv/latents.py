"""Encode the training image(s) once.

The VAE costs as much as a large share of a UNet step at 512 px; re-encoding a
fixed image every step (as the diffusers example does) buys nothing. Each
image is encoded as its centre square, optionally mirrored, plus any random
crops, and steps draw from this cache.
"""

from __future__ import annotations

import torch
from PIL import Image

from captinv.backends.base import ModelBackend
from captinv.images import square_crops, to_pixels


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
    return backend.encode_images(torch.stack(pixels)).to(backend.device, torch.float32)


def sample_draws(
    latents: torch.Tensor, count: int, num_timesteps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0, noise, t) for `count` draws; random numbers come from a CPU generator for reproducibility."""
    index = torch.randint(0, latents.shape[0], (count,), generator=generator)
    timesteps = torch.randint(0, num_timesteps, (count,), generator=generator)
    noise = torch.randn((count, *latents.shape[1:]), generator=generator)
    return latents[index.to(latents.device)], noise.to(latents.device), timesteps.to(latents.device)
