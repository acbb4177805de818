"""The CLI as a user runs it: a subprocess on a tiny model saved to disk."""

import os
import subprocess
import sys

import pytest
from PIL import Image

from tests import factories

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "captinv", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sd1")
    factories.sd_pipeline(path / "tok").save_pretrained(path / "pipe")
    return path / "pipe"


def test_invert_then_inspect(saved_model, chelsea, tmp_path):
    chelsea.save(tmp_path / "Chelsea Cat.png")
    done = _run(
        "invert",
        "Chelsea Cat.png",
        "--model",
        str(saved_model),
        "--init",
        "text",
        "--text",
        "a tabby cat",
        "--steps",
        "3",
        "--resolution",
        "128",
        "--out",
        "emb",
        "--sample",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    # the preview is rendered at the size the run trained at, not the tiny model's own 32 px
    assert Image.open(tmp_path / "emb" / "chelsea-cat-all.preview.png").size == (128, 128)
    written = sorted(p.name for p in (tmp_path / "emb").iterdir())
    assert written == [
        "chelsea-cat-all.preview.png",
        "chelsea-cat-all.safetensors",
        "chelsea-cat-w01-a.safetensors",
        "chelsea-cat-w02-tabby.safetensors",
        "chelsea-cat-w03-cat.safetensors",
    ]
    shown = _run("inspect", "emb/chelsea-cat-all.safetensors", cwd=tmp_path)
    assert shown.returncode == 0
    assert "chelsea-cat-all: 3 vector(s)" in shown.stdout and "emb_params: [3, 32]" in shown.stdout
    assert "caption = a tabby cat" in shown.stdout
    # three steps are fewer than auto-stop needs to judge a plateau: the run says it trained them all
    assert "trained all 3 steps" in done.stderr
    assert "max_steps = 3" in shown.stdout and "stop_reason = max_steps" in shown.stdout


def test_errors_are_one_line_and_exit_2(saved_model, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    bad_image = _run(
        "invert", "bad.png", "--model", str(saved_model), "--init", "text", "--text", "x", cwd=tmp_path
    )
    assert bad_image.returncode == 2
    assert bad_image.stderr.strip().count("\n") == 0 and "Could not read the image" in bad_image.stderr
    bad_option = _run("invert", "bad.png", "--model", "m", "--steps", "0", cwd=tmp_path)
    assert bad_option.returncode == 2 and "steps must be at least 1" in bad_option.stderr


def test_perfusion_then_generate_with_and_without_the_concept(saved_model, chelsea, tmp_path):
    chelsea.save(tmp_path / "kitty.png")
    flags = ("--init", "text", "--text", "a tabby cat", "--steps", "2", "--covariance-prompts", "32")
    done = _run("perfusion", "kitty.png", "--model", str(saved_model), *flags, "--sample", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "perfusion").iterdir()) == [
        "covariance",
        "kitty.preview.png",
        "kitty.safetensors",
    ]
    assert "kitty (cat):" in done.stderr and "KB" in done.stderr and "a tabby kitty" in done.stderr
    renders = {}
    for label, extra in {
        "stock": (),
        "concept": ("--concept", "perfusion/kitty.safetensors"),
        "strong": ("--concept", "perfusion/kitty.safetensors:0.3"),
    }.items():
        out = tmp_path / f"{label}.png"
        ran = _run(
            "generate", "a photo of a tabby kitty", "--model", str(saved_model), "--steps", "2",
            "--out", str(out), *extra, cwd=tmp_path,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        renders[label] = out.read_bytes()
    assert len(set(renders.values())) == 3  # the concept changes the image, and β changes it again
    again = _run("perfusion", "kitty.png", "--model", str(saved_model), *flags, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
