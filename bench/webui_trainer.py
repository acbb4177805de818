"""The WebUI's built-in textual-inversion trainer against captinv's tab, in one WebUI.

    python -m bench.webui_trainer --webui /path/to/stable-diffusion-webui [--size 256] [--json out.json]

Starts the WebUI checkout given (its own venv; set up by hand, as for the tests/webui tier)
offline on the CPU with captinv cloned into its extensions, on a random-weight checkpoint of
the real SD 1.5 sizes (`--tiny` for the tests' tiny one, a smoke run). Then, in that one
server, on one photo at one resolution, it times:
- builtin: `/sdapi/v1/train/embedding` (the Train tab's trainer: one image per step, its
  default settings, no previews, no intermediate saves) on a one-vector embedding;
- captinv: `/captinv/v1/invert` (the tab's trainer: caption init, no preview, no card files),
  at each `--batches` noise draws per step.
Each call runs `--steps` short and long; the cost of a step is the difference of the two
calls' wall time over the difference in steps, so set-up (latent encoding, model preparation,
the HTTP round trip) cancels out; an untimed first round takes the once-per-server costs. Rounds
interleave the trainers so load from elsewhere falls on all of them. Ratios are within this one run; absolute seconds mean little across machines.

The server's data folder is a temporary one: nothing is written into the checkout.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from tests.webui.hosts import A1111
from tests.webui.server import Server, start_webui

CAPTION = "a tabby cat"
SAFE_UNPICKLE_OFF = ["--disable-safe-unpickle"]


@dataclass
class Timing:
    trainer: str  # "builtin" or "captinv"
    draws: int  # noise draws (images) per step
    seconds: dict[int, list[float]] = field(default_factory=dict)  # steps -> wall time of each call

    def per_step(self) -> float:
        short, long = sorted(self.seconds)
        return (statistics.median(self.seconds[long]) - statistics.median(self.seconds[short])) / (
            long - short
        )

    def samples_per_second(self) -> float:
        return self.draws / self.per_step()


def _photo(size: int) -> Image.Image:
    return Image.fromarray(np.asarray(data.chelsea())).resize((size, size))


def _builtin(server: Server, dataset: Path, logs: Path, size: int, steps: int, run: int) -> float:
    """Train a fresh one-vector embedding with the built-in trainer; the call's wall time."""
    name = f"bench-builtin-{run}"
    status, body = server.call(
        "/sdapi/v1/create/embedding",
        {"name": name, "num_vectors_per_token": 1, "overwrite_old": True, "init_text": "cat"},
    )
    assert status == 200 and "error" not in body.get("info", ""), body
    request = {
        "id_task": f"bench-{run}",
        "embedding_name": name,
        "learn_rate": "0.005",
        "batch_size": 1,
        "gradient_step": 1,
        "data_root": str(dataset),
        "log_directory": str(logs),
        "training_width": size,
        "training_height": size,
        "varsize": False,
        "steps": steps,
        "clip_grad_mode": "disabled",
        "clip_grad_value": "0.1",
        "shuffle_tags": False,
        "tag_drop_out": 0,
        "latent_sampling_method": "once",
        "use_weight": False,
        "create_image_every": 0,
        "save_embedding_every": 10**6,  # never reached; 0 would skip making the log folder it writes to
        "template_filename": "subject_filewords.txt",
        "save_image_with_stored_embedding": False,
        "preview_from_txt2img": False,
        "preview_prompt": "",
        "preview_negative_prompt": "",
        "preview_steps": 20,
        "preview_sampler_name": "Euler a",
        "preview_cfg_scale": 7.0,
        "preview_seed": -1,
        "preview_width": size,
        "preview_height": size,
    }
    started = time.perf_counter()
    status, body = server.call("/sdapi/v1/train/embedding", request, timeout=7200)
    seconds = time.perf_counter() - started
    if status != 200 or "error: None" not in body.get("info", ""):
        raise RuntimeError(f"the built-in trainer failed: {status} {body}")
    return seconds


def _captinv(server: Server, photo_b64: str, size: int, steps: int, draws: int, run: int) -> float:
    request = {
        "image": photo_b64,
        "caption": CAPTION,
        "name": f"bench-captinv-{run}",
        "steps": steps,
        "batch_size": draws,
        "resolution": size,
    }
    started = time.perf_counter()
    status, body = server.call("/captinv/v1/invert", request, timeout=7200)
    seconds = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"captinv failed: {status} {body}")
    return seconds


def _measure(server: Server, args: argparse.Namespace, folder: Path) -> list[Timing]:
    dataset, logs = folder / "dataset", folder / "logs"
    dataset.mkdir()
    photo = _photo(args.size)
    photo.save(dataset / "photo.png")
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    photo_b64 = base64.b64encode(buffer.getvalue()).decode()
    options = {"captinv_preview": False, "captinv_card_files": False}
    if args.attention:
        options["cross_attention_optimization"] = args.attention
    status, body = server.call("/sdapi/v1/options", options)
    assert status == 200, body

    timings = [Timing("builtin", 1)] + [Timing("captinv", draws) for draws in args.batches]
    run = 0

    def call(timing: Timing, steps: int) -> float:
        nonlocal run
        run += 1
        if timing.trainer == "builtin":
            return _builtin(server, dataset, logs, args.size, steps, run)
        return _captinv(server, photo_b64, args.size, steps, timing.draws, run)

    # Round 0 is not timed: first calls pay once-per-server costs (the checkpoint's hash, which
    # the built-in trainer asks for, first allocations), which would not cancel out.
    for timing in timings:
        print(f"round 0: {timing.trainer} x{timing.draws}: {call(timing, min(args.steps)):.1f} s", flush=True)
    for round_ in range(1, args.repeats + 1):
        for steps in args.steps:
            for timing in timings:
                seconds = call(timing, steps)
                timing.seconds.setdefault(steps, []).append(seconds)
                print(
                    f"round {round_}: {timing.trainer} x{timing.draws}, {steps} steps: {seconds:.1f} s",
                    flush=True,
                )
    return timings


def _report(timings: list[Timing], args: argparse.Namespace, commit: str) -> dict:
    builtin = timings[0]
    print(
        f"\nWebUI {commit}, attention {args.attention or 'Automatic'}, {args.size} px, {'tiny' if args.tiny else 'SD 1.5 sizes'}, random weights, CPU"
    )
    print(
        f"{'trainer':<10}{'draws/step':>11}{'s/step':>10}{'samples/s':>11}{'builtin/this, step':>20}"
        f"{'this/builtin, samples/s':>25}"
    )
    rows = []
    for timing in timings:
        step_ratio = builtin.per_step() / timing.per_step()
        sample_ratio = timing.samples_per_second() / builtin.samples_per_second()
        rows.append(
            asdict(timing)
            | {
                "per_step": timing.per_step(),
                "samples_per_second": timing.samples_per_second(),
                "builtin_step_over_this": step_ratio,
                "samples_per_second_over_builtin": sample_ratio,
            }
        )
        print(
            f"{timing.trainer:<10}{timing.draws:>11}{timing.per_step():>10.2f}{timing.samples_per_second():>11.3f}"
            f"{step_ratio:>20.2f}{sample_ratio:>25.2f}"
        )
    return {
        "webui_commit": commit,
        "attention": args.attention or "Automatic",
        "size": args.size,
        "tiny": args.tiny,
        "steps": args.steps,
        "repeats": args.repeats,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webui", type=Path, required=True, help="a WebUI checkout with its venv")
    parser.add_argument("--size", type=int, default=256, help="training resolution in pixels")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[1, 4], help="captinv's noise draws per step"
    )
    parser.add_argument("--steps", type=int, nargs=2, default=[2, 6], help="short and long call, in steps")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds")
    parser.add_argument(
        "--attention",
        help="the WebUI's cross-attention optimisation for generation and captinv, as its Settings list it, e.g. "
        "'sdp - scaled dot product' (default: the "
        "WebUI's Automatic; the built-in trainer switches it off either way)",
    )
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny checkpoint (a smoke run)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    commit = subprocess.run(
        ["git", "-C", str(args.webui), "describe", "--tags", "--always"], capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="captinv-bench-") as tmp:
        folder = Path(tmp)
        # The Train tab's embeddings are .pt files, which the WebUI's own safe unpickler rejects
        # under torch >= 2.6; these are files this run made itself.
        with start_webui(
            A1111, args.webui, "sd1", folder, full=not args.tiny, flags=SAFE_UNPICKLE_OFF
        ) as server:
            timings = _measure(server, args, folder)
    result = _report(timings, args, commit)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
