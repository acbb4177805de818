"""What one inversion step costs, against its floor and against the usual way of doing it.

    python -m bench.step_cost [--sizes 256 512] [--batches 1 4] [--curve 1 2 4 8] [--json out.json]

Variants, each run in a fresh subprocess (so peak memory is its own) on a model of the real
Stable Diffusion 1.5 UNet / CLIP-L / VAE sizes with random weights:
- floor:   UNet forward + backward to the conditioning, plus text-encoder forward and backward
           from its token embeddings; nothing else (no optimizer, no tokenizing, no VAE).
- captinv: the real trainer's step through the public API (prepare, latent cache, Trainer.step).
- naive:   the diffusers textual_inversion example's step: VAE encode every step, a placeholder
           token added to the vocabulary, the whole embedding matrix in AdamW, frozen rows restored.
Ratios are taken within one run on one machine; absolute seconds mean little across machines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

CAPTION = "a tabby cat sitting on a wooden table next to a window"


@dataclass
class Measurement:
    variant: str
    size: int
    batch: int
    seconds_per_step: float
    setup_seconds: float
    peak_mb: float  # peak RSS (CPU) or max allocated (CUDA) during the steps, above the loaded model


def sd15_pipeline(tiny: bool):
    """SD 1.5's architecture with random weights (or a tiny one for the smoke test)."""
    if tiny:
        from tests import factories

        return factories.sd_pipeline(Path(tempfile.mkdtemp()))
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from captinv.clip_vocab import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_act="quick_gelu",
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=clip_tokenizer(Path(tempfile.mkdtemp())),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _photo(size: int):
    import numpy as np
    from PIL import Image
    from skimage import data

    return Image.fromarray(np.asarray(data.chelsea())).resize((size, size))


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class _Memory:
    """Peak memory of what follows, above the level at construction.

    On CPU the process's peak RSS is reset first (Linux `clear_refs`), so memory used before
    (model building, latent caching) cannot hide the step's own peak. On CUDA: allocator peak.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.base = _rss_kb("VmRSS") * 1024

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (_rss_kb("VmHWM") * 1024 - self.base) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(step, steps: int, device: torch.device) -> float:
    step()  # warm-up: allocator, kernels, caches
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def run_floor(pipe, size: int, batch: int, steps: int) -> tuple[float, float, float]:
    unet, text = pipe.unet, pipe.text_encoder
    device = unet.device
    for module in (unet, text, pipe.vae):
        module.requires_grad_(False)
    ids = pipe.tokenizer(
        [f"a photo of {CAPTION}"] * batch, padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids.to(device)
    rows = text.get_input_embeddings()(ids).detach().requires_grad_()
    hook = text.get_input_embeddings().register_forward_hook(lambda *_: rows)
    side = size // pipe.vae_scale_factor
    latents = torch.randn(batch, 4, side, side, device=device)
    noise = torch.randn_like(latents)
    t = torch.randint(0, 1000, (batch,), device=device)
    memory = _Memory(device)

    def step() -> None:
        cond = text(ids)[0]
        loss = F.mse_loss(unet(latents, t, encoder_hidden_states=cond).sample.float(), noise)
        rows.grad = None
        loss.backward()

    seconds = _timed(step, steps, device)
    hook.remove()
    return seconds, 0.0, memory.peak_mb()


def run_captinv(pipe, size: int, batch: int, steps: int) -> tuple[float, float, float]:
    from captinv.backends.diffusers_backend import DiffusersBackend
    from captinv.config import InvertConfig
    from captinv.inversion import prepare
    from captinv.latents import build_latent_cache
    from captinv.trainer import Trainer

    start = time.perf_counter()
    backend = DiffusersBackend(pipe)
    config = InvertConfig(init="text", text=CAPTION, batch_size=batch, resolution=size, steps=10_000)
    plan = prepare(backend, CAPTION, "bench", config, Path(tempfile.mkdtemp()))
    latents = build_latent_cache(
        backend, [_photo(size)], size, flip=True, random_crops=0, generator=torch.Generator().manual_seed(0)
    )
    trainer = Trainer(backend, plan, latents, config)
    with backend.training(False):
        memory = _Memory(backend.device)
        trainer.step()
        setup = time.perf_counter() - start
        seconds = _timed(trainer.step, steps, backend.device)
    return seconds, setup, memory.peak_mb()


def run_naive(pipe, size: int, batch: int, steps: int) -> tuple[float, float, float]:
    """The diffusers example's loop, reduced to its per-step work."""
    from captinv.images import to_pixels

    unet, text, vae, tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    device = unet.device
    start = time.perf_counter()
    tokenizer.add_tokens(["<cat>"])
    token = tokenizer.convert_tokens_to_ids("<cat>")
    text.resize_token_embeddings(len(tokenizer))
    table = text.get_input_embeddings().weight
    with torch.no_grad():
        table[token] = table[tokenizer.convert_tokens_to_ids("cat</w>")]
    for module in (unet, vae, text):
        module.requires_grad_(False)
    table.requires_grad_(True)
    original = table.detach().clone()
    optimizer = torch.optim.AdamW([table], lr=5e-4, weight_decay=1e-2)
    image = _photo(size)
    pixels = torch.stack([to_pixels(image, (0, 0, size, size), size, flip=False)] * batch).to(device)
    keep = torch.ones(len(tokenizer), dtype=torch.bool, device=device)
    keep[token] = False
    schedule = pipe.scheduler
    memory = _Memory(device)

    def step() -> None:
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,), device=device)
        noisy = schedule.add_noise(latents, noise, t)
        ids = tokenizer(
            ["a photo of a <cat>"] * batch, padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        cond = text(ids.to(device))[0]
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=cond).sample.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            table[keep] = original[keep]

    step()
    setup = time.perf_counter() - start
    return _timed(step, steps, device), setup, memory.peak_mb()


VARIANTS = {"floor": run_floor, "captinv": run_captinv, "naive": run_naive}


def worker(args: argparse.Namespace) -> None:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = sd15_pipeline(args.tiny).to(device)
    seconds, setup, peak = VARIANTS[args.worker](pipe, args.size, args.batch, args.steps)
    print(json.dumps(asdict(Measurement(args.worker, args.size, args.batch, seconds, setup, peak))))


def measure(variant: str, size: int, batch: int, args: argparse.Namespace) -> Measurement:
    command = [
        sys.executable,
        "-m",
        "bench.step_cost",
        "--worker",
        variant,
        "--size",
        str(size),
        "--batch",
        str(batch),
        "--steps",
        str(args.steps),
    ]
    command += ["--tiny"] if args.tiny else []
    command += ["--device", args.device] if args.device else []
    done = subprocess.run(
        command, capture_output=True, text=True, check=True, env=os.environ | {"PYTHONWARNINGS": "ignore"}
    )
    return Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}{gpu}; {os.cpu_count()} cores, {torch.get_num_threads()} threads; torch {torch.__version__}"


def report(results: list[Measurement], curve: list[Measurement]) -> dict:
    rows = []
    print(f"machine: {machine()}")
    print(
        "| size | batch | floor s/step | captinv s/step | naive s/step | captinv/floor | naive/captinv | "
        "peak MB floor | captinv | naive | mem captinv/floor | captinv setup s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(m.size, m.batch) for m in results})
    for size, batch in keys:
        by = {m.variant: m for m in results if (m.size, m.batch) == (size, batch)}
        floor, ours, naive = by["floor"], by["captinv"], by["naive"]
        row = {
            "size": size,
            "batch": batch,
            "time_captinv_over_floor": ours.seconds_per_step / floor.seconds_per_step,
            "time_naive_over_captinv": naive.seconds_per_step / ours.seconds_per_step,
            "memory_captinv_over_floor": ours.peak_mb / floor.peak_mb if floor.peak_mb > 0 else math.nan,
            "measurements": [asdict(m) for m in (floor, ours, naive)],
        }
        rows.append(row)
        print(
            f"| {size} | {batch} | {floor.seconds_per_step:.3f} | {ours.seconds_per_step:.3f} | "
            f"{naive.seconds_per_step:.3f} | {row['time_captinv_over_floor']:.2f} | "
            f"{row['time_naive_over_captinv']:.2f} | {floor.peak_mb:.0f} | {ours.peak_mb:.0f} | "
            f"{naive.peak_mb:.0f} | {row['memory_captinv_over_floor']:.2f} | {ours.setup_seconds:.1f} |"
        )
    if curve:
        print(
            "\ncaptinv noise draws per step -> samples/s:",
            ", ".join(f"{m.batch}: {m.batch / m.seconds_per_step:.2f}" for m in curve),
        )
    return {
        "machine": machine(),
        "rows": rows,
        "curve": [{"batch": m.batch, "samples_per_second": m.batch / m.seconds_per_step} for m in curve],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--curve", type=int, nargs="*", default=[1, 2, 4, 8], help="noise draws for the samples/s curve"
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps per measurement (after one warm-up)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny model instead of SD 1.5 sizes (smoke test)"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    results = [measure(v, s, b, args) for s in args.sizes for b in args.batches for v in VARIANTS]
    curve = [measure("captinv", args.sizes[0], b, args) for b in args.curve]
    summary = report(results, curve)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
