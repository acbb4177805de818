"""Train the mini world's text-to-image model: a latent diffusion model small enough for a CPU.

    python -m bench.miniworld.train --out captinv/data/miniworld --seed 0 --minutes 25

The recipe is Stable Diffusion's, shrunk: an `AutoencoderKL` (one 2x downsampling, so 32 px
images become 16x16x4 latents), a cross-attention `UNet2DConditionModel` predicting ε under the
scaled-linear DDPM schedule, and a small `CLIPTextModel` trained jointly from scratch over the
real CLIP vocabulary (as the original LDM text-to-image model did), with 10 % empty captions for
classifier-free guidance. The result is saved as a `StableDiffusionPipeline` folder, so the same
code paths that load SD 1.x load it. Training runs for a wall-clock budget rather than a step
count, because the machines it runs on are shared and their speed varies.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from bench.miniworld.world import Scene, detect, sample_scenes
from captinv.clip_vocab import clip_tokenizer

log = logging.getLogger(__name__)

# The schedule of Stable Diffusion 1.x, so trainers written for SD apply unchanged.
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


@dataclass
class TrainConfig:
    out: Path
    seed: int = 0
    minutes: float = 25.0
    resolution: int = 32
    text_width: int = 64
    scenes: int = 8000
    vae_share: float = 0.2  # of the budget, spent on the autoencoder before the diffusion model
    batch: int = 32
    lr: float = 1e-3
    uncond_rate: float = 0.1
    eval_per_concept: int = 16
    eval_steps: int = 20
    eval_guidance: float = 4.0


def build_vae() -> AutoencoderKL:
    """Two levels (one 2x downsampling) and no attention: images this simple need only local codes."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        mid_block_add_attention=False,
    )


def build_unet(latent_side: int, text_width: int) -> UNet2DConditionModel:
    """Convolutions only at full latent resolution; text enters at 8x8 and in the middle block."""
    return UNet2DConditionModel(
        sample_size=latent_side,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_text_encoder(tokenizer, width: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=4 * width,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def render_batch(scenes: list[Scene], resolution: int) -> torch.Tensor:
    """Images in [-1, 1], NCHW, as the VAE expects them."""
    pixels = np.stack([np.asarray(scene.render(resolution), dtype=np.float32) for scene in scenes])
    # contiguous NCHW: oneDNN's convolutions are several times slower on the permuted strides
    return (torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1).contiguous()


def _batches(count: int, batch: int, rng: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        yield from torch.randperm(count, generator=rng).split(batch)


def _lr_at(fraction: float, peak: float) -> float:
    """Short warm-up, then cosine to zero at the end of the time budget."""
    return peak * min(1.0, fraction / 0.03) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))


def _timed_steps(seconds: float) -> Iterator[float]:
    """Yield the elapsed fraction of `seconds` until it is spent."""
    start = time.monotonic()
    while (fraction := (time.monotonic() - start) / seconds) < 1.0:
        yield fraction


def train_vae(vae: AutoencoderKL, pixels: torch.Tensor, cfg: TrainConfig, seconds: float) -> int:
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    order = _batches(len(pixels), cfg.batch, torch.Generator().manual_seed(cfg.seed))
    steps = 0
    for steps, fraction in enumerate(_timed_steps(seconds), 1):  # noqa: B007 - steps is reported
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(fraction, cfg.lr)
        x = pixels[next(order)]
        posterior = vae.encode(x).latent_dist
        loss = F.mse_loss(vae.decode(posterior.sample()).sample, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if steps % 100 == 0:
            log.info("vae step %d (%.0f%%): loss %.4f", steps, 100 * fraction, loss.item())
    return steps


@torch.no_grad()
def reconstruction_accuracy(vae: AutoencoderKL, scenes: list[Scene], resolution: int) -> float:
    """How often `detect` reads the right colour and shape from the autoencoder's round trip:
    the ceiling for the diffusion model's own score."""
    decoded = vae.decode(vae.encode(render_batch(scenes, resolution)).latent_dist.mean).sample
    array = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    found = [detect(Image.fromarray(image)) for image in array]
    return sum(
        f.get("colour") == s.colour and f.get("shape") == s.shape for f, s in zip(found, scenes)
    ) / len(scenes)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """Posterior means, scaled to unit variance; the scale is stored in the VAE config as in SD."""
    latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return latents * vae.config.scaling_factor


def _token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def train_diffusion(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    latents: torch.Tensor,
    ids: torch.Tensor,
    empty_ids: torch.Tensor,
    cfg: TrainConfig,
    seconds: float,
) -> int:
    """ε-prediction with the text encoder trained jointly; Adam without weight decay, so the
    vocabulary rows no caption uses keep their initial values instead of shrinking to zero."""
    schedule = DDPMScheduler(**SCHEDULE)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    rng = torch.Generator().manual_seed(cfg.seed + 1)
    order = _batches(len(latents), cfg.batch, rng)
    steps, running = 0, 0.0
    for steps, fraction in enumerate(_timed_steps(seconds), 1):  # noqa: B007 - steps is reported
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(fraction, cfg.lr)
        index = next(order)
        x0, tokens = latents[index], ids[index].clone()
        tokens[torch.rand(len(index), generator=rng) < cfg.uncond_rate] = empty_ids
        noise = torch.randn(x0.shape, generator=rng)
        t = torch.randint(0, schedule.config.num_train_timesteps, (len(index),), generator=rng)
        cond = text_encoder(tokens).last_hidden_state
        prediction = unet(schedule.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        running = 0.98 * running + 0.02 * loss.item() if steps > 1 else loss.item()
        if steps % 200 == 0:
            log.info("diffusion step %d (%.0f%%): loss %.4f", steps, 100 * fraction, running)
    return steps


def assemble_pipeline(vae, unet, text_encoder, tokenizer) -> StableDiffusionPipeline:
    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def text_following(pipe: StableDiffusionPipeline, scenes: list[Scene], cfg: TrainConfig) -> dict[str, float]:
    """Fraction of generated images in which `detect` finds each attribute the caption asked for."""
    hits = {key: 0 for key in ("colour", "shape", "size", "position")}
    for start in range(0, len(scenes), 32):
        chunk = scenes[start : start + 32]
        images = pipe(
            [scene.caption() for scene in chunk],
            num_inference_steps=cfg.eval_steps,
            guidance_scale=cfg.eval_guidance,
            generator=torch.Generator().manual_seed(cfg.seed + start),
            height=cfg.resolution,
            width=cfg.resolution,
        ).images
        for scene, image in zip(chunk, images):
            found = detect(image)
            for key in hits:
                hits[key] += found.get(key) == getattr(scene, key)
    return {key: count / len(scenes) for key, count in hits.items()}


def evaluate(out: Path, cfg: TrainConfig) -> dict[str, dict[str, float]]:
    """Reload the saved folder in fp32 (what users get) and measure held-out and seen concepts."""
    pipe = StableDiffusionPipeline.from_pretrained(str(out), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    count = cfg.eval_per_concept * 4
    return {
        "heldout": text_following(pipe, sample_scenes(cfg.seed + 1000, count, "heldout"), cfg),
        "seen": text_following(pipe, sample_scenes(cfg.seed + 2000, count, "train"), cfg),
    }


def train(cfg: TrainConfig) -> dict:
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    started = time.monotonic()
    budget = cfg.minutes * 60
    scenes = sample_scenes(cfg.seed, cfg.scenes, "train")
    pixels = render_batch(scenes, cfg.resolution)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = clip_tokenizer(Path(tmp))
    vae = build_vae()
    vae_steps = train_vae(vae, pixels, cfg, budget * cfg.vae_share)
    latents = encode_latents(vae.eval().requires_grad_(False), pixels)
    vae_accuracy = reconstruction_accuracy(
        vae, sample_scenes(cfg.seed + 3000, 128, "heldout"), cfg.resolution
    )
    log.info("vae round trip: colour+shape detected in %.0f%% of held-out renders", 100 * vae_accuracy)
    unet = build_unet(latents.shape[-1], cfg.text_width)
    text_encoder = build_text_encoder(tokenizer, cfg.text_width)
    ids = _token_ids(tokenizer, [scene.caption() for scene in scenes])
    empty = _token_ids(tokenizer, [""])[0]
    remaining = budget - (time.monotonic() - started)
    diffusion_steps = train_diffusion(unet, text_encoder, latents, ids, empty, cfg, remaining)
    pipe = assemble_pipeline(vae, unet, text_encoder, tokenizer).to(torch.float16)
    pipe.save_pretrained(str(cfg.out), safe_serialization=True)
    train_seconds = time.monotonic() - started
    accuracy = evaluate(cfg.out, cfg)
    return {
        "seed": cfg.seed,
        "command": "python -m bench.miniworld.train " + shlex.join(sys.argv[1:]),
        "minutes": cfg.minutes,
        "train_wall_seconds": round(train_seconds, 1),
        "vae_steps": vae_steps,
        "diffusion_steps": diffusion_steps,
        "batch": cfg.batch,
        "scaling_factor": vae.config.scaling_factor,
        "vae_roundtrip_accuracy": vae_accuracy,
        "accuracy": accuracy,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--batch", type=int, default=TrainConfig.batch)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = train(TrainConfig(out=args.out, seed=args.seed, minutes=args.minutes, batch=args.batch))
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report["accuracy"], indent=2))


if __name__ == "__main__":
    main()
