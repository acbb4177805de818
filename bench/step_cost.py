"""What one inversion step costs, against its floor and against the usual way of doing it.

    python -m bench.step_cost [--sizes 256 512] [--batches 1 4] [--curve 1 2 4 8] [--json out.json]
    python -m bench.step_cost --quick [--tiny]     # smoke run: 128 px, one round, two steps

Variants, on a model of the real Stable Diffusion 1.5 UNet / CLIP-L / VAE sizes with random
weights (or, with --tiny, the tests' tiny pipeline):
- floor:   UNet forward + backward to the conditioning (no weight gradients), plus text-encoder
           forward and backward from its token embeddings; nothing else (no optimizer, no
           tokenizing, no VAE). No inversion step can cost less.
- captinv: the real trainer's step through the public API (prepare, latent cache, Trainer.step).
- naive:   the diffusers textual_inversion example's step: VAE encode every step, a placeholder
           token added to the vocabulary, the whole embedding matrix in AdamW, frozen rows restored.

Each (variant, size, batch) runs in a fresh subprocess, so its peak memory is its own, and the
whole set is repeated `--repeats` times in interleaved rounds, so that load from other processes
falls on every variant alike. Steps are timed one by one (wall clock and process CPU time) after
one warm-up step; the table gives the median over all timed steps of all rounds. "first step" is
the time from the start of a variant's setup (for captinv: planning, latent caching, the trainer)
to the end of its first step. Peak memory is the steps' peak above what was resident once setup
was done: peak RSS on CPU (reset through /proc/self/clear_refs), max allocated on CUDA.
Ratios are taken within one run on one machine; absolute seconds mean little across machines.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("bench.step_cost")

ROOT = Path(__file__).resolve().parent.parent
CAPTION = "a tabby cat sitting on a wooden table next to a window"
TARGET = 1.10  # captinv/floor, for time per step and for peak memory
FULL = {"sizes": [256], "batches": [1, 4], "curve": [1, 2, 4, 8], "steps": 3, "repeats": 3}
QUICK = {"sizes": [128], "batches": [1, 2], "curve": [1, 2], "steps": 2, "repeats": 1}

Step = Callable[[], object]


@dataclass
class Measurement:
    variant: str
    size: int
    batch: int
    seconds: list[float]  # wall clock of each timed step
    cpu_seconds: list[float]  # process CPU time (all threads) of each timed step
    first_step_seconds: float  # start of setup to end of the first step
    peak_mb: float  # peak during the steps above the level after setup
    attention: str = ""  # the kernels used, the same for every variant


# -- the model ---------------------------------------------------------------------


def clip_l():
    """SD 1.5's text encoder, CLIP ViT-L/14's text tower (the released config), with random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            projection_dim=768,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )


def sd15_pipeline(tmp: Path, tiny: bool = False):
    """SD 1.5's architecture (the released configs, written out) with random weights."""
    if tiny:
        from tests import factories

        return factories.sd_pipeline(tmp)
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from captinv.clip_vocab import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text = clip_l()
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=clip_tokenizer(tmp / "tokenizer"),
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


# -- measuring ---------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_free_memory() -> None:
    """Hand freed heap back to the OS, so setup's leftovers cannot absorb the steps' allocations."""
    gc.collect()
    with suppress(OSError, AttributeError):  # not glibc: the peak may read a little low
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Memory:
    """Peak memory of what follows, above the level at construction.

    On CPU the process's peak RSS is reset first (Linux `clear_refs`), so memory used before
    (model building, latent caching) cannot hide the steps' own peak. On CUDA: allocator peak.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        _release_free_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            log.warning("cannot reset the peak RSS; peaks include model building")
        self.base = _status_kb("VmRSS") * 1024

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (_status_kb("VmHWM") * 1024 - self.base) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_in_process(variant: str, pipe, size: int, batch: int, steps: int) -> Measurement:
    """Set up one variant, run its first step, then time `steps` more one by one."""
    device = pipe.unet.device
    start = time.perf_counter()
    with (VARIANTS | OPTIONAL)[variant](pipe, size, batch) as step:
        memory = _Memory(device)
        step()
        _sync(device)
        first = time.perf_counter() - start
        wall, cpu = [], []
        for _ in range(steps):
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            step()
            _sync(device)
            wall.append(time.perf_counter() - wall_start)
            cpu.append(time.process_time() - cpu_start)
        return Measurement(variant, size, batch, wall, cpu, first, memory.peak_mb(), attention(pipe))


# -- the variants ------------------------------------------------------------------


@contextmanager
def floor(pipe, size: int, batch: int) -> Iterator[Step]:
    """UNet and text encoder, forward and backward to their inputs, and nothing else."""
    unet, text = pipe.unet, pipe.text_encoder
    device = unet.device
    for module in (unet, text, pipe.vae):
        module.requires_grad_(False).eval()
    ids = pipe.tokenizer(
        [f"a photo of {CAPTION}"] * batch, padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids.to(device)
    layer = text.get_input_embeddings()
    rows = layer(ids).detach().requires_grad_()
    side = size // pipe.vae_scale_factor
    latents = torch.randn(batch, unet.config.in_channels, side, side, device=device)
    noise = torch.randn_like(latents)
    t = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        rows.grad = None
        cond = text(ids)[0]
        loss = F.mse_loss(unet(latents, t, encoder_hidden_states=cond).sample.float(), noise)
        loss.backward()

    hook = layer.register_forward_hook(lambda *_: rows)
    try:
        yield step
    finally:
        hook.remove()


@contextmanager
def captinv(pipe, size: int, batch: int) -> Iterator[Step]:
    """The real thing, through the public API."""
    from captinv.backends.diffusers_backend import DiffusersBackend
    from captinv.config import InvertConfig
    from captinv.inversion import prepare
    from captinv.latents import build_latent_cache
    from captinv.trainer import Trainer

    backend = DiffusersBackend(pipe)
    config = InvertConfig(init="text", text=CAPTION, batch_size=batch, resolution=size, steps=10_000)
    with tempfile.TemporaryDirectory() as out:
        plan = prepare(backend, CAPTION, "bench", config, Path(out))
    latents = build_latent_cache(
        backend, [_photo(size)], size, flip=True, random_crops=0, generator=torch.Generator().manual_seed(0)
    )
    trainer = Trainer(backend, plan, latents, config)
    with backend.training(config.gradient_checkpointing):
        yield trainer.step


@contextmanager
def naive(pipe, size: int, batch: int) -> Iterator[Step]:
    """The diffusers textual_inversion example's loop, reduced to its per-step work."""
    from diffusers import DDPMScheduler

    from captinv.images import to_pixels

    unet, text, vae, tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    device = unet.device
    tokenizer.add_tokens(["<cat>"])
    token = tokenizer.convert_tokens_to_ids("<cat>")
    text.resize_token_embeddings(len(tokenizer))
    table = text.get_input_embeddings().weight
    with torch.no_grad():
        table[token] = table[tokenizer.convert_tokens_to_ids("cat</w>")]
    for module in (unet, vae, text):
        module.requires_grad_(False)
    unet.eval()
    vae.eval()
    text.train()  # as the example does; CLIP's dropout is 0, so it costs nothing
    table.requires_grad_(True)
    original = table.detach().clone()
    optimizer = torch.optim.AdamW([table], lr=5e-4, weight_decay=1e-2)
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    image = _photo(size)
    pixels = torch.stack([to_pixels(image, (0, 0, size, size), size, flip=False)] * batch).to(device)
    keep = torch.ones(len(tokenizer), dtype=torch.bool, device=device)
    keep[token] = False

    def step() -> None:
        latents = vae.encode(pixels).latent_dist.sample().detach() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, schedule.config.num_train_timesteps, (batch,), device=device)
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

    yield step


@contextmanager
def perfusion(pipe, size: int, batch: int) -> Iterator[Step]:
    """A Perfusion step: captinv's step plus the gated K/V edits of all 16 layers and their V targets."""
    from captinv.backends.diffusers_backend import DiffusersBackend
    from captinv.config import InvertConfig, PerfusionOptions
    from captinv.latents import build_latent_cache
    from captinv.perfusion.training import PerfusionTrainer, plan_concept, text_covariance

    backend = DiffusersBackend(pipe)
    config = InvertConfig(init="text", text=CAPTION, batch_size=batch, resolution=size, steps=10_000)
    options = PerfusionOptions(covariance_prompts=64)  # setup only; the step's cost does not depend on it
    covariance = text_covariance(backend, options, None)
    plan = plan_concept(backend, CAPTION, "bench", "cat")
    latents = build_latent_cache(
        backend, [_photo(size)], size, flip=True, random_crops=0, generator=torch.Generator().manual_seed(0)
    )
    trainer = PerfusionTrainer(backend, plan, latents, config, options, covariance.factor())
    with trainer.session():
        yield trainer.step


VARIANTS = {"floor": floor, "captinv": captinv, "naive": naive}
OPTIONAL = {"perfusion": perfusion}  # measured with --perfusion, reported against captinv


# -- orchestration -----------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        pipe = sd15_pipeline(Path(tmp), args.tiny).to(device)
        result = measure_in_process(args.worker, pipe, args.size, args.batch, args.steps)
    print(json.dumps(asdict(result)))


def measure(variant: str, size: int, batch: int, args: argparse.Namespace) -> Measurement:
    """One variant in a fresh interpreter, so the peak memory is that variant's alone."""
    command = [sys.executable, "-m", "bench.step_cost", "--worker", variant]
    command += ["--size", str(size), "--batch", str(batch), "--steps", str(args.steps)]
    command += ["--tiny"] if args.tiny else []
    command += ["--device", args.device] if args.device else []
    command += ["--threads", str(args.threads)] if args.threads else []
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"}
    )
    if done.returncode:
        raise RuntimeError(f"{variant} at {size} px, batch {batch} failed:\n{done.stderr[-3000:]}")
    result = Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))
    log.info(
        "%s %d px batch %d: %.3f s/step (median of %s)",
        variant,
        size,
        batch,
        statistics.median(result.seconds),
        ", ".join(f"{s:.3f}" for s in result.seconds),
    )
    return result


def measure_all(args: argparse.Namespace) -> list[Measurement]:
    """Every variant at every size and batch, plus captinv's curve, in interleaved rounds."""
    jobs = [(v, size, batch) for size in args.sizes for batch in args.batches for v in VARIANTS]
    jobs += (
        [("perfusion", size, batch) for size in args.sizes for batch in args.batches]
        if args.perfusion
        else []
    )
    jobs += [("captinv", args.sizes[0], b) for b in args.curve if b not in args.batches]
    results = []
    for round_ in range(args.repeats):
        log.info("round %d of %d", round_ + 1, args.repeats)
        results += [measure(*job, args) for job in jobs]
    return results


# -- reporting ---------------------------------------------------------------------


def machine(device: str | None = None) -> str:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        cpu += f", {torch.cuda.get_device_name()}"
    import diffusers
    import transformers

    return (
        f"{cpu}; {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, transformers {transformers.__version__}"
    )


def attention(pipe) -> str:
    """Which attention kernels the model uses, to show that every variant uses the same."""
    unet = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
    return f"UNet {'+'.join(unet)}, CLIP {pipe.text_encoder.config._attn_implementation}"


@dataclass
class Row:
    """One (variant, size, batch) over all its rounds."""

    variant: str
    size: int
    batch: int
    seconds_per_step: float  # median over every timed step of every round
    cpu_seconds_per_step: float
    fastest: float
    slowest: float
    peak_mb: float  # median over rounds
    first_step_seconds: float  # median over rounds
    steps_timed: int


def summarise(results: list[Measurement]) -> list[Row]:
    groups: dict[tuple[str, int, int], list[Measurement]] = {}
    for m in results:
        groups.setdefault((m.variant, m.size, m.batch), []).append(m)
    rows = []
    for (variant, size, batch), runs in groups.items():
        wall = [s for m in runs for s in m.seconds]
        cpu = [s for m in runs for s in m.cpu_seconds]
        rows.append(
            Row(
                variant,
                size,
                batch,
                statistics.median(wall),
                statistics.median(cpu),
                min(wall),
                max(wall),
                statistics.median(m.peak_mb for m in runs),
                statistics.median(m.first_step_seconds for m in runs),
                len(wall),
            )
        )
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def ratios(rows: list[Row]) -> list[dict]:
    found = {(r.variant, r.size, r.batch): r for r in rows}
    table = []
    for size, batch in sorted({(r.size, r.batch) for r in rows if r.variant == "floor"}):
        base, ours, other = (found[(v, size, batch)] for v in VARIANTS)
        table.append(
            {
                "size": size,
                "batch": batch,
                "time_captinv_over_floor": _ratio(ours.seconds_per_step, base.seconds_per_step),
                "cpu_captinv_over_floor": _ratio(ours.cpu_seconds_per_step, base.cpu_seconds_per_step),
                "memory_captinv_over_floor": _ratio(ours.peak_mb, base.peak_mb),
                "time_naive_over_captinv": _ratio(other.seconds_per_step, ours.seconds_per_step),
                "memory_naive_over_captinv": _ratio(other.peak_mb, ours.peak_mb),
            }
        )
        if (extra := found.get(("perfusion", size, batch))) is not None:
            table[-1]["time_perfusion_over_captinv"] = _ratio(extra.seconds_per_step, ours.seconds_per_step)
            table[-1]["memory_perfusion_over_captinv"] = _ratio(extra.peak_mb, ours.peak_mb)
    return table


def curve(rows: list[Row], size: int, batches: list[int]) -> list[dict]:
    found = {r.batch: r for r in rows if (r.variant, r.size) == ("captinv", size)}
    return [{"batch": b, "size": size, "samples_per_second": b / found[b].seconds_per_step} for b in batches]


def _mark(value: float) -> str:
    return f"{value:.2f}" + (" (!)" if value > TARGET else "")


def render(summary: dict) -> str:
    lines = [f"machine: {summary['machine']}", f"model: {summary['model']}", f"timing: {summary['timing']}"]
    lines += [
        "",
        "| size | batch | variant | s/step | CPU s/step | fastest–slowest s | peak MB | first step s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['size']} | {r['batch']} | {r['variant']} | {r['seconds_per_step']:.3f} | "
        f"{r['cpu_seconds_per_step']:.3f} | {r['fastest']:.3f}–{r['slowest']:.3f} | {r['peak_mb']:.0f} | "
        f"{r['first_step_seconds']:.1f} |"
        for r in summary["rows"]
    ]
    lines += [
        "",
        f"targets: captinv/floor ≤ {TARGET:.2f} for time and for peak memory; (!) marks a miss",
        "| size | batch | captinv/floor time | captinv/floor CPU | captinv/floor memory | naive/captinv time | "
        "naive/captinv memory |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['size']} | {r['batch']} | {_mark(r['time_captinv_over_floor'])} | "
        f"{_mark(r['cpu_captinv_over_floor'])} | {_mark(r['memory_captinv_over_floor'])} | "
        f"{r['time_naive_over_captinv']:.2f} | {r['memory_naive_over_captinv']:.2f} |"
        for r in summary["ratios"]
    ]
    lines += [
        f"perfusion/captinv at {r['size']} px, batch {r['batch']}: time {r['time_perfusion_over_captinv']:.2f}, "
        f"memory {r['memory_perfusion_over_captinv']:.2f}"
        for r in summary["ratios"]
        if "time_perfusion_over_captinv" in r
    ]
    if summary["curve"]:
        points = ", ".join(f"{p['batch']}: {p['samples_per_second']:.3f}" for p in summary["curve"])
        lines += [
            "",
            f"captinv samples/s by noise draws per step ({summary['curve'][0]['size']} px): {points}",
        ]
    return "\n".join(lines)


def summary_of(results: list[Measurement], args: argparse.Namespace, load: tuple[float, ...]) -> dict:
    rows = summarise(results)
    rows.sort(key=lambda r: (r.size, r.batch, list(VARIANTS | OPTIONAL).index(r.variant)))
    kind = "tiny test pipeline" if args.tiny else "SD 1.5 sizes (UNet, CLIP-L text encoder, VAE)"
    after = os.getloadavg() if hasattr(os, "getloadavg") else ()
    return {
        "machine": machine(args.device),
        "model": f"{kind}, random weights, float32; attention: {' / '.join(sorted({m.attention for m in results}))}",
        "timing": (
            f"{args.repeats} round(s) x {args.steps} timed step(s) after one warm-up, medians; "
            f"load average {' '.join(f'{x:.1f}' for x in load)} before, "
            f"{' '.join(f'{x:.1f}' for x in after)} after"
        ),
        "rows": [asdict(r) for r in rows],
        "ratios": ratios(rows),
        "curve": curve(rows, args.sizes[0], args.curve),
        "measurements": [asdict(m) for m in results],
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", help=f"pixels (default {FULL['sizes']})")
    parser.add_argument(
        "--batches", type=int, nargs="+", help=f"noise draws per step (default {FULL['batches']})"
    )
    parser.add_argument(
        "--curve", type=int, nargs="*", help=f"captinv's samples/s curve (default {FULL['curve']})"
    )
    parser.add_argument(
        "--steps", type=int, help=f"timed steps per run, after one warm-up (default {FULL['steps']})"
    )
    parser.add_argument("--repeats", type=int, help=f"interleaved rounds (default {FULL['repeats']})")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument(
        "--tiny", action="store_true", help="the tests' tiny pipeline instead of SD 1.5 sizes"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--perfusion", action="store_true", help="also time a Perfusion step (reported as perfusion/captinv)"
    )
    parser.add_argument("--worker", choices=list(VARIANTS | OPTIONAL), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse(argv)
    if args.worker:
        worker(args)
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    summary = summary_of(measure_all(args), args, load)
    print(render(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
