"""Small shared pieces of the tests."""

from __future__ import annotations

import torch

from captinv.config import InvertConfig
from captinv.inversion import prepare
from captinv.latents import build_latent_cache
from captinv.trainer import Trainer

CAPTION = "a tabby cat sitting on a wooden table"


def text_config(**overrides) -> InvertConfig:
    values = {"init": "text", "text": CAPTION, "steps": 3, "learning_rate": 0.05, "batch_size": 2}
    return InvertConfig(**(values | overrides))


def make_trainer(backend, image, tmp_path, **overrides) -> Trainer:
    config = text_config(**overrides)
    plan = prepare(backend, config.text, "chelsea", config, tmp_path)
    latents = build_latent_cache(
        backend, [image], backend.default_resolution, flip=True, random_crops=1, generator=torch.Generator()
    )
    return Trainer(backend, plan, latents, config)


def weights(backend) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{name}": value.detach().clone()
        for i, module in enumerate(backend.frozen_modules())
        for name, value in module.state_dict().items()
    }
