"""The CLI as a user runs it: a subprocess on a tiny model saved to disk."""

import os
import subprocess
import sys

import pytest

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
        "--out",
        "emb",
        "--sample",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
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
    assert "gate at β 0.7, τ 0.15: open (> 0.05) on" in done.stderr  # the selectivity line
    assert "text-encoding covariance" in done.stderr  # its progress bar
    renders = {}
    for label, extra in {
        "stock": (),
        "concept": ("--concept", "perfusion/kitty.safetensors"),
        "strong": ("--concept", "perfusion/kitty.safetensors:0.3"),
        "global": ("--concept", "perfusion/kitty.safetensors:global"),
    }.items():
        out = tmp_path / f"{label}.png"
        ran = _run(
            "generate", "a photo of a tabby kitty", "--model", str(saved_model), "--steps", "2",
            "--out", str(out), *extra, cwd=tmp_path,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert "another text path" not in ran.stderr and "no prompt to lock" not in ran.stderr
        renders[label] = out.read_bytes()
    assert len(set(renders.values())) == 4  # the concept changes the image; β and global locking, again
    bad = _run("generate", "kitty", "--model", str(saved_model), "--concept", "perfusion/kitty.safetensors:nan",
               cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "β must be a number from 0 to 1, got nan" in bad.stderr
    again = _run("perfusion", "kitty.png", "--model", str(saved_model), *flags, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_generate_warns_when_a_concept_meets_another_text_path(saved_model, chelsea, tmp_path):
    import torch

    chelsea.save(tmp_path / "kitty.png")
    flags = ("--init", "text", "--text", "a tabby cat", "--steps", "1", "--covariance-prompts", "16")
    assert _run("perfusion", "kitty.png", "--model", str(saved_model), *flags, cwd=tmp_path).returncode == 0
    other = factories.sd_pipeline(tmp_path / "tok")
    with torch.no_grad():
        other.text_encoder.text_model.final_layer_norm.weight.mul_(1.5)  # a fine-tuned text encoder
    other.save_pretrained(tmp_path / "other")
    ran = _run("generate", "a kitty", "--model", str(tmp_path / "other"), "--steps", "1",
               "--concept", "perfusion/kitty.safetensors", cwd=tmp_path)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "Perfusion concept 'kitty' was trained with another text path" in ran.stderr
