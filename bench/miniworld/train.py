"""Train the mini world's text-to-image model: a latent diffusion model small enough for a CPU.

    python -m bench.miniworld.train --out captinv/data/miniworld --seed 0 --minutes 40 --threads 1
    python -m bench.miniworld.train --out captinv/data/miniworld --evaluate --guidance 8   # measure only

The recipe is Stable Diffusion's, shrunk: an `AutoencoderKL` (without downsampling, built by
hand as an exact per-pixel code: 32 px images become 32x32x4 latents), a cross-attention
`UNet2DConditionModel` predicting ε under the scaled-linear DDPM schedule (Min-SNR-weighted),
and a small `CLIPTextModel` trained jointly from scratch over the real CLIP vocabulary (as the
original LDM text-to-image model did), with 10 % empty captions for classifier-free guidance,
captions that leave the colour or the shape unsaid, and some inside captinv's templates. The result is saved as a `StableDiffusionPipeline` folder, so the same
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
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

from bench.miniworld.world import COLOURS, SIZES, Scene, detect, sample_scenes
from captinv.clip_vocab import clip_tokenizer
from captinv.templates import OBJECT_TEMPLATES

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
    minutes: float = 40.0
    resolution: int = 32
    text_width: int = 64
    scenes: int = 8000
    batch: int = 32
    lr: float = 2e-3
    uncond_rate: float = 0.1
    template_rate: float = 0.2
    # Share of captions that leave the colour (or, as often, the shape) unsaid: each word then has to
    # carry its attribute alone, which is what lets "purple" and "triangle" combine when unseen together.
    leave_out_rate: float = 0.15
    min_snr: float | None = 5.0
    eval_per_concept: int = 16
    eval_steps: int = 20
    eval_guidance: float = 4.0
    probe_minutes: float = 5.0


def build_vae(pixel_mean: torch.Tensor) -> AutoencoderKL:
    """A real `AutoencoderKL` whose weights are set by hand to a per-pixel code with an exact
    round trip: latent channels 0-2 are the RGB values minus their dataset mean, channel 3 their
    average. Training one on the CPUs this runs on took longer than the diffusion model's whole
    budget to stop shifting colours; built, it is exact from the first step.
    """
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(4 * 3,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=3,
        mid_block_add_attention=False,
    )
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.zero_()  # zero second convolutions make every resnet block the identity
        for half in (vae.encoder, vae.decoder):
            _carry(half.conv_in.weight, half.conv_in.bias)
            half.conv_norm_out.weight.fill_(1 / _SIGNAL)
            half.conv_norm_out.bias.copy_(-_CARRIER_SIGNS.repeat(3) / _SIGNAL)
        mixing = torch.cat([torch.eye(3), torch.full((1, 3), 1 / 3)])  # latent channel <- RGB
        _read_out(vae.encoder.conv_out.weight[:4], mixing)
        vae.encoder.conv_out.bias[:4] = -mixing @ pixel_mean
        vae.encoder.conv_out.bias[4:] = -20.0  # log-variance: a posterior this narrow is a point
        _read_out(vae.decoder.conv_out.weight, torch.eye(3))
        vae.decoder.conv_out.bias.copy_(pixel_mean)
        vae.quant_conv.weight.copy_(torch.eye(8)[:, :, None, None])
        vae.post_quant_conv.weight.copy_(torch.eye(4)[:, :, None, None])
    return vae


# Each input value v travels as four channels (±1 ± _SIGNAL·v) whose sum is zero and whose square
# sum is 4 + 4·_SIGNAL²·v², so GroupNorm over the four leaves v unchanged up to _SIGNAL² terms; the
# norm's affine maps them to ±v, and SiLU(v) - SiLU(-v) = v undoes the activation exactly.
_SIGNAL = 0.05
_CARRIER_SIGNS = torch.tensor([1.0, -1.0, 1.0, -1.0])
_VALUE_SIGNS = torch.tensor([1.0, -1.0, -1.0, 1.0])


def _carry(weight: torch.Tensor, bias: torch.Tensor) -> None:
    """conv_in: input channel c (c < 3) to channels 4c..4c+3 as carrier ± _SIGNAL · value."""
    centre = weight.shape[-1] // 2
    for c in range(3):
        weight[4 * c : 4 * c + 4, c, centre, centre] = _SIGNAL * _VALUE_SIGNS
        bias[4 * c : 4 * c + 4] = _CARRIER_SIGNS


def _read_out(weight: torch.Tensor, mixing: torch.Tensor) -> None:
    """conv_out: output o = sum_c mixing[o, c] * (SiLU(+v_c) - SiLU(-v_c))."""
    centre = weight.shape[-1] // 2
    for c in range(3):
        weight[:, 4 * c, centre, centre] = mixing[:, c]
        weight[:, 4 * c + 1, centre, centre] = -mixing[:, c]


def build_unet(latent_side: int, text_width: int) -> UNet2DConditionModel:
    """Convolutions only at 32x32 and 16x16; text enters at 8x8, 4x4 and in the middle block,
    where attention is cheap and one position covers a whole region of the image (the 4x4 level
    costs about 2 % more time per step than stopping at 8x8 and sees the whole picture at once)."""
    return UNet2DConditionModel(
        sample_size=latent_side,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_text_encoder(tokenizer, width: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=4 * width,
        num_attention_heads=4,
        num_hidden_layers=2,
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


_LEAVE_OUT = (None, "shape", "colour")  # caption variants: full, without the shape, without the colour


def training_captions(scenes: list[Scene], cfg: TrainConfig, leave_out: str | None = None) -> list[str]:
    """Captions, with the scene's `leave_out` attribute ('colour', 'shape') left unsaid, a share
    of them inside captinv's object templates exactly as its trainer frames a caption ("a photo of
    a a big red circle ..."), so that frame is a neutral one to this model too. Templates naming a
    size or colour of their own are left out: they would contradict the scene."""
    rng = random.Random(cfg.seed)
    own_words = set(SIZES) | set(COLOURS) | {"large"}
    frames = [t for t in OBJECT_TEMPLATES if not own_words & set(t.replace("{}", "").split())]
    captions = []
    for scene in scenes:
        caption = scene.caption()
        if leave_out:
            caption = caption.replace(f" {getattr(scene, leave_out)} ", " ", 1)
        frame = rng.choice(frames) if rng.random() < cfg.template_rate else "{}"
        captions.append(frame.format(caption))
    return captions


def _token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def _loss_weights(schedule: DDPMScheduler, gamma: float | None) -> torch.Tensor:
    """Min-SNR-γ weights for ε-prediction (Hang et al. 2023): min(SNR, γ) / SNR. The nearly clean
    timesteps, where text hardly matters, stop dominating the gradient, and what the caption
    decides (colour, shape, place) is learned sooner."""
    if gamma is None:
        return torch.ones(schedule.config.num_train_timesteps)
    snr = schedule.alphas_cumprod / (1 - schedule.alphas_cumprod)
    return snr.clamp(max=gamma) / snr


def train_diffusion(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    latents: torch.Tensor,
    ids: torch.Tensor,
    empty_ids: torch.Tensor,
    cfg: TrainConfig,
    seconds: float,
    probe: Callable[[], None] | None = None,
) -> int:
    """ε-prediction with the text encoder trained jointly; Adam without weight decay, so the
    vocabulary rows no caption uses keep their initial values instead of shrinking to zero.
    `probe` runs every `cfg.probe_minutes`, to show early whether the text is being followed."""
    schedule = DDPMScheduler(**SCHEDULE)
    weights = _loss_weights(schedule, cfg.min_snr)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    rng = torch.Generator().manual_seed(cfg.seed + 1)
    order = _batches(len(latents), cfg.batch, rng)
    steps, running, next_probe = 0, 0.0, cfg.probe_minutes * 60 / seconds
    for steps, fraction in enumerate(_timed_steps(seconds), 1):  # noqa: B007 - steps is reported
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(fraction, cfg.lr)
        index = next(order)
        draw = torch.rand(len(index), generator=rng)
        variant = (draw < 2 * cfg.leave_out_rate).long() + (draw < cfg.leave_out_rate).long()
        x0, tokens = latents[index], ids[variant, index]
        tokens[torch.rand(len(index), generator=rng) < cfg.uncond_rate] = empty_ids
        noise = torch.randn(x0.shape, generator=rng)
        t = torch.randint(0, schedule.config.num_train_timesteps, (len(index),), generator=rng)
        cond = text_encoder(tokens).last_hidden_state
        prediction = unet(schedule.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        loss = (F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3)) * weights[t]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        running = 0.98 * running + 0.02 * loss.item() if steps > 1 else loss.item()
        if steps % 200 == 0:
            log.info("diffusion step %d (%.0f%%): loss %.4f", steps, 100 * fraction, running)
        if probe and fraction >= next_probe:
            log.info("diffusion step %d (%.0f%%): probing", steps, 100 * fraction)
            probe()
            next_probe += cfg.probe_minutes * 60 / seconds
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
    torch.manual_seed(cfg.seed)
    started = time.monotonic()
    budget = cfg.minutes * 60
    scenes = sample_scenes(cfg.seed, cfg.scenes, "train")
    pixels = render_batch(scenes, cfg.resolution)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = clip_tokenizer(Path(tmp))
    vae = build_vae(pixels.mean(dim=(0, 2, 3)))
    latents = encode_latents(vae.eval().requires_grad_(False), pixels)
    vae_accuracy = reconstruction_accuracy(
        vae, sample_scenes(cfg.seed + 3000, 128, "heldout"), cfg.resolution
    )
    log.info("vae round trip: colour+shape detected in %.0f%% of held-out renders", 100 * vae_accuracy)
    unet = build_unet(latents.shape[-1], cfg.text_width)
    text_encoder = build_text_encoder(tokenizer, cfg.text_width)
    ids = torch.stack(
        [_token_ids(tokenizer, training_captions(scenes, cfg, leave_out)) for leave_out in _LEAVE_OUT]
    )
    empty = _token_ids(tokenizer, [""])[0]
    remaining = budget - (time.monotonic() - started)
    probe_scenes = sample_scenes(cfg.seed + 4000, 32, "heldout")

    def probe() -> None:
        pipe = assemble_pipeline(vae, unet, text_encoder, tokenizer)
        pipe.set_progress_bar_config(disable=True)
        for guidance in (cfg.eval_guidance, 2 * cfg.eval_guidance):
            found = text_following(pipe, probe_scenes, replace(cfg, eval_guidance=guidance))
            log.info("held-out text following at guidance %g: %s", guidance, found)
        unet.train(), text_encoder.train()

    diffusion_steps = train_diffusion(unet, text_encoder, latents, ids, empty, cfg, remaining, probe)
    pipe = assemble_pipeline(vae, unet, text_encoder, tokenizer).to(torch.float16)
    pipe.save_pretrained(str(cfg.out), safe_serialization=True)
    train_seconds = time.monotonic() - started
    accuracy = evaluate(cfg.out, cfg)
    return {
        "seed": cfg.seed,
        "command": "python -m bench.miniworld.train " + shlex.join(sys.argv[1:]),
        "minutes": cfg.minutes,
        "train_wall_seconds": round(train_seconds, 1),
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
    parser.add_argument("--minutes", type=float, default=TrainConfig.minutes)
    parser.add_argument("--batch", type=int, default=TrainConfig.batch)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument(
        "--guidance", type=float, default=TrainConfig.eval_guidance, help="for the evaluation"
    )
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="only measure the model saved in --out at --guidance, adding it to its training.json",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads; 1 on a busy machine, where threads wait on each other"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = TrainConfig(
        out=args.out,
        seed=args.seed,
        minutes=args.minutes,
        batch=args.batch,
        lr=args.lr,
        eval_guidance=args.guidance,
    )
    record = args.out / "training.json"
    if args.evaluate:
        report = json.loads(record.read_text(encoding="utf-8"))
        report.setdefault("evaluations", {})[str(args.guidance)] = evaluate(args.out, config)
        report["evaluate_command"] = "python -m bench.miniworld.train " + shlex.join(sys.argv[1:])
        print(json.dumps(report["evaluations"][str(args.guidance)], indent=2))
    else:
        report = train(config)
        print(json.dumps(report["accuracy"], indent=2))
    record.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
