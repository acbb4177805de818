"""The seam between the trainer and a host model.

The trainer never sees a UNet, a VAE or a tokenizer: it asks a backend for
token rows, latents, conditioning and a prediction. Family differences (one
text encoder or two, pooled vectors, time ids) live in the backend, and the
WebUI adapter implements the same interface over the WebUI's loaded model.

Embeddings are passed by name, the way the WebUI itself resolves them: a
prompt contains the pseudo-words' names, and `embeddings` maps each name to its
vectors per text encoder. Keys are the file keys of the family's embedding
layout: `emb_params` for one-encoder models, `clip_l`/`clip_g` for SDXL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from captinv.errors import UnsupportedModelError

Vectors = dict[str, torch.Tensor]
"""One embedding: encoder key -> [n, width] rows."""

Conditioning = Any
"""Whatever the backend's `predict` takes: a tensor, or a dict for SDXL."""


@dataclass(frozen=True)
class NoiseSchedule:
    """The model's own training schedule: what x_t and the regression target are."""

    alphas_cumprod: torch.Tensor  # float32, [T]
    parameterization: Literal["eps", "v"]

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_bar = self.alphas_cumprod.to(like.device)[t].view(-1, *([1] * (like.dim() - 1)))
        return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        signal, sigma = self._coefficients(t, x0)
        return signal * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "eps":
            return noise
        signal, sigma = self._coefficients(t, x0)
        return signal * noise - sigma * x0


@dataclass(frozen=True)
class EncoderSpec:
    key: str  # file key of this encoder's rows
    width: int


class ModelBackend(ABC):
    """What the trainer needs from a text-to-image latent-diffusion model."""

    family: str  # "sd1", "sd2", "sdxl": recorded in file metadata
    model_name: str
    encoders: tuple[EncoderSpec, ...]
    schedule: NoiseSchedule
    device: torch.device
    dtype: torch.dtype  # the frozen model's compute dtype
    default_resolution: int
    vae_advice = "Use another VAE or checkpoint: this one does not encode the image to finite numbers."
    """What the user can do when the VAE gives NaN/inf latents at every precision the backend tries."""
    float32_advice = "train with the model in float32"
    """How the user gets a float32 model on this host (a half-precision run that diverges may need one)."""

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """BPE ids of `text` without BOS/EOS, as the WebUI matches embedding names."""

    @abstractmethod
    def token_rows(self, token_ids: list[int]) -> Vectors:
        """Detached float32 copies of the token-embedding rows, per encoder."""

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> scaled latents (float32), without gradients."""

    def encode_images_upcast(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """`encode_images` again at a higher VAE precision, after it returned NaN/inf; None when the
        VAE already runs at the highest precision the host allows.

        SDXL's VAE overflows in float16. The diffusers backend retries in float32; the WebUI
        adapter follows the WebUI's own "revert VAE to 32-bit floats" / bfloat16 options.
        """
        return None

    @abstractmethod
    def conditioning(self, prompts: list[str], embeddings: Mapping[str, Vectors]) -> Conditioning:
        """Encode prompts with the named embeddings spliced in; differentiable w.r.t. them."""

    @abstractmethod
    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The model's ε or v prediction for x_t."""

    @abstractmethod
    def frozen_modules(self) -> Iterable[torch.nn.Module]:
        """Every module whose parameters must stay untouched by a run."""

    @contextmanager
    def gradient_checkpointing(self, enabled: bool) -> Iterator[None]:
        """Recompute activations in backward while inside; a no-op unless overridden."""
        yield

    @contextmanager
    def training(self, gradient_checkpointing: bool) -> Iterator[None]:
        """Everything a run changes on the host model, undone on exit however the run ends."""
        with frozen_parameters(self.frozen_modules()), self.gradient_checkpointing(gradient_checkpointing):
            yield

    def denoiser(self) -> torch.nn.Module:
        """The UNet, whose cross-attention projections Perfusion wraps."""
        raise UnsupportedModelError(
            f"{type(self).__name__} does not expose its UNet; Perfusion cannot edit it."
        )

    def context(self, cond: Conditioning) -> torch.Tensor:
        """The text encodings [B, N, d] that the UNet's cross-attention reads from `cond`."""
        return cond

    def text_encodings(self, prompts: list[str], padding: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain prompts' encodings [B, N, d] and a mask [B, N] of each prompt's own positions (BOS,
        words, EOS), for statistics of the text path (Perfusion's covariance). With `padding` False
        a backend may stop at the batch's longest prompt; this default always encodes the full
        conditioning the UNet gets."""
        with torch.no_grad():
            context = self.context(self.conditioning(prompts, {}))
        lengths = torch.tensor([self.count_tokens(prompt) + 2 for prompt in prompts], device=context.device)
        return context, torch.arange(context.shape[1], device=context.device) < lengths[:, None]

    def existing_names(self) -> set[str]:
        """Embedding names the host already knows (beyond files in the output folder)."""
        return set()

    def run_metadata(self) -> dict[str, str]:
        """Host state the result depends on (e.g. the WebUI's clip skip), stored in its files."""
        return {}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))


@contextmanager
def frozen_parameters(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Switch off `requires_grad` on every parameter while inside, then restore each flag.

    A frozen model that still has `requires_grad=True` computes weight gradients
    every step (the WebUI's built-in trainer pays ~55% for this).
    """
    flags: dict[torch.nn.Parameter, bool] = {}
    for module in modules:
        for parameter in module.parameters():
            flags.setdefault(parameter, parameter.requires_grad)
    try:
        for parameter in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
