"""The latent-diffusion training objective, as a pure function of its inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from captinv.backends.base import Conditioning, ModelBackend


def diffusion_loss(
    backend: ModelBackend,
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Conditioning,
) -> torch.Tensor:
    """Mean squared error between the model's prediction and its ε or v target, in float32."""
    schedule = backend.schedule
    noisy = schedule.add_noise(x0, noise, timesteps)
    prediction = backend.predict(noisy, timesteps, cond)
    return F.mse_loss(prediction.float(), schedule.target(x0, noise, timesteps))


def init_pull(parameters: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared distance of the vectors from where they started (the optional L2 pull)."""
    return sum(F.mse_loss(parameters[key], initial[key], reduction="mean") for key in parameters)
