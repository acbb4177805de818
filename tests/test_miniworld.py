"""The mini world: its generator and detector, and the trained model packaged with captinv."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.miniworld.world import COLOURS, HELD_OUT, SHAPES, Scene, detect, sample_scenes
from captinv.backends.diffusers_backend import PACKAGED_MODELS, DiffusersBackend
from captinv.embedding_io import read_embedding
from captinv.latents import build_latent_cache, sample_draws
from captinv.loss import diffusion_loss

RESOLUTION = 32
ROOT = Path(__file__).resolve().parent.parent


def test_sampling_and_rendering_are_deterministic():
    first, again, other = sample_scenes(7, 20), sample_scenes(7, 20), sample_scenes(8, 20)
    assert first == again
    assert first != other
    assert [s.render(RESOLUTION).tobytes() for s in first] == [s.render(RESOLUTION).tobytes() for s in again]


def test_held_out_pairs_never_appear_in_training_but_their_parts_do():
    train = sample_scenes(0, 2000, "train")
    seen = {(s.colour, s.shape) for s in train}
    assert not seen & set(HELD_OUT)
    assert {c for c, _ in seen} == set(COLOURS) and {s for _, s in seen} == set(SHAPES)
    assert {(s.colour, s.shape) for s in sample_scenes(0, 200, "heldout")} == set(HELD_OUT)


@pytest.mark.parametrize(
    ("scene", "caption"),
    [
        (Scene("red", "circle", "big", "left"), "a big red circle on the left"),
        (Scene("purple", "triangle", "small", "top"), "a small purple triangle at the top"),
        (Scene("white", "diamond", "big", "centre"), "a big white diamond in the centre"),
        (Scene("green", "square", "small", "bottom", dx=0.02), "a small green square at the bottom"),
    ],
)
def test_caption_names_the_scene(scene, caption):
    assert scene.caption() == caption


def test_a_render_shows_the_scene_where_the_caption_says():
    image = np.asarray(Scene("blue", "square", "big", "right").render(RESOLUTION))
    left, right = image[:, : RESOLUTION // 2], image[:, RESOLUTION // 2 :]
    assert right.max(axis=2).mean() > 4 * left.max(axis=2).mean()
    assert tuple(image[RESOLUTION // 2, int(0.7 * RESOLUTION)]) == COLOURS["blue"]


def test_detector_reads_back_every_attribute_of_renders():
    scenes = sample_scenes(11, 150, "train") + sample_scenes(11, 50, "heldout")
    keys = ("colour", "shape", "size", "position")
    misses = Counter(k for s in scenes for k, v in detect(s.render(RESOLUTION)).items() if v != getattr(s, k))
    assert all(misses[k] <= 0.05 * len(scenes) for k in keys), misses
    assert all(detect(s.render(RESOLUTION)).keys() == set(keys) for s in scenes[:5])


def test_detector_finds_nothing_in_an_empty_image():
    assert detect(Image.new("RGB", (RESOLUTION, RESOLUTION))) == {}


@pytest.fixture(scope="module")
def miniworld() -> DiffusersBackend:
    return DiffusersBackend.load("miniworld", device="cpu")


def test_packaged_model_is_small_and_loads_in_fp32(miniworld):
    size = sum(p.stat().st_size for p in PACKAGED_MODELS["miniworld"].rglob("*") if p.is_file())
    assert size <= 12 * 2**20
    assert miniworld.family == "sd1" and miniworld.dtype == torch.float32
    assert all(p.dtype.itemsize == 4 for m in miniworld.frozen_modules() for p in m.parameters())
    assert miniworld.default_resolution == RESOLUTION


@pytest.mark.parametrize(("colour", "shape"), HELD_OUT[:2])
def test_packaged_model_draws_the_colour_of_an_unseen_pair(miniworld, colour, shape):
    prompt = f"a big {colour} {shape} in the centre"
    found = [detect(miniworld.generate(prompt, {}, steps=10, seed=seed)) for seed in range(5)]
    assert sum(f.get("colour") == colour for f in found) >= 3, found


def _quick_start_command() -> list[str]:
    """The README's quick-start `captinv invert` line (with its continuation), as arguments."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("python -m captinv invert examples/miniworld-")
    line = readme[start : readme.index("\n```", start)].replace("\\\n", " ")
    return shlex.split(line)


@torch.no_grad()
def _loss_on_the_sample(backend, image, name, vectors, draws: int = 96) -> float:
    """The training loss of `a photo of <name>` on fixed (noise, timestep) draws of the image."""
    latents = build_latent_cache(
        backend, [image], RESOLUTION, flip=False, random_crops=0, generator=torch.Generator()
    )
    x0, noise, t = sample_draws(
        latents, draws, backend.schedule.num_timesteps, torch.Generator().manual_seed(0)
    )
    cond = backend.conditioning([f"a photo of {name}"] * draws, {name: vectors})
    return diffusion_loss(backend, x0, noise, t, cond).item()


def test_readme_quick_start_inverts_a_sample_offline(miniworld, tmp_path):
    """The README's main command, as written (fewer steps), writes every file and a preview in
    which the detector finds the sample's concept, and its vectors fit the sample measurably
    better than the untrained (step-0) vectors, the caption's own token rows: the preview alone
    would pass with no training at all, since the plain caption already draws the concept."""
    command = _quick_start_command()
    assert command[:4] == ["python", "-m", "captinv", "invert"]
    # CI=true as on CI machines, where transformers hands its warnings on to the root logger too
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), CI="true")
    done = subprocess.run(
        [sys.executable, *command[1:], "--steps", "20", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if line.strip() and not re.search(r"\d+%\|", line)]
    assert [line.split(":")[0] for line in said] == [  # what was loaded and how it went; no library noise
        "init text",
        "model",
        "horizontal flip on",
        "trained all 20 steps",
        "prompt with",
    ], done.stderr
    stem = Path(command[4]).stem
    caption = (ROOT / "examples" / f"{stem}.txt").read_text(encoding="utf-8").strip()
    expected = {f"{stem}-all.safetensors", f"{stem}-all.preview.png"} | {
        f"{stem}-w{i:02d}-{word}.safetensors" for i, word in enumerate(caption.split(), 1)
    }
    assert {p.name for p in tmp_path.iterdir()} == expected
    preview = detect(Image.open(tmp_path / f"{stem}-all.preview.png"))
    truth = stem.split("-")[1:]
    assert [preview.get("colour"), preview.get("shape")] == truth, preview

    image = Image.open(ROOT / command[4]).convert("RGB")
    trained = read_embedding(tmp_path / f"{stem}-all.safetensors").vectors
    untrained = miniworld.token_rows(miniworld.tokenize(caption))
    assert trained["emb_params"].shape == untrained["emb_params"].shape
    name = f"{stem}-all"
    before = _loss_on_the_sample(miniworld, image, name, untrained)
    after = _loss_on_the_sample(miniworld, image, name, trained)
    # deterministic draws; 20 steps gain ~0.9%, vectors that barely moved (lr 1e-7) ~0.00004%
    assert after < 0.995 * before, (before, after)
