"""The CLI as a user runs it: a subprocess on a tiny model saved to disk."""

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from captinv import __main__ as cli
from captinv.backends.diffusers_backend import DiffusersBackend
from tests import factories

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = Path(ROOT) / "examples" / "miniworld-green-square"


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
    shown = _run("inspect", "perfusion/kitty.safetensors", cwd=tmp_path)  # before: "not an embedding"
    assert shown.returncode == 0, shown.stderr
    assert "kitty: Perfusion concept, keys locked to 'cat'" in shown.stdout and "gate: β 0.7" in shown.stdout
    assert "emb_params: [1, 32]" in shown.stdout and "sentence = a tabby kitty" in shown.stdout


# --- in this process: the same `main` the subprocess runs -------------------------------------------


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["caption", "invert", "perfusion", "generate"])
def test_help_prints_each_default_once_and_percent_signs_as_written(command, capsys):
    """Before: `invert --help` raised on the '%' of "~30% slower"; bool flags said their default twice."""
    text = " ".join(_help(command, capsys).split())
    options = re.split(r" (?=--[a-z])", text[text.index("options:") :])
    for block in options:
        assert block.count("default") <= 1, block
        assert "(default: None)" not in block, block
    if command in ("invert", "perfusion"):
        assert "less memory, ~30% slower" in text and "(default: 0.005)" in text


def test_perfusion_help_speaks_of_the_concept_not_of_embeddings(capsys):
    """Before: `perfusion --help` said "Base name of the new embeddings" and offered '*' for classic
    textual inversion."""
    text = " ".join(_help("perfusion", capsys).split())
    assert "Name of the concept: its file, its tag and the word prompts use" in text
    assert "new embeddings" not in text and "classic textual inversion" not in text


def test_max_grad_norm_none_turns_clipping_off():
    args = cli._parser().parse_args(["invert", "x.png", "--model", "m", "--max-grad-norm", "none"])
    assert cli._options(args).max_grad_norm is None
    args = cli._parser().parse_args(["invert", "x.png", "--model", "m", "--resolution", "None"])
    assert cli._options(args).resolution is None


@pytest.fixture
def square(tmp_path, monkeypatch):
    """The mini world's green square (with its caption file) in an empty working folder."""
    for suffix in (".png", ".txt"):
        shutil.copy(EXAMPLE.with_suffix(suffix), tmp_path / f"square{suffix}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


QUICK = ("--model", "miniworld", "--steps", "1", "--batch-size", "1")


def test_ctrl_c_while_the_preview_renders_says_which_files_exist(square, monkeypatch, capfd):
    """Before: "nothing was written", although every embedding file was."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DiffusersBackend, "generate", interrupted)
    assert cli.main(["invert", "square.png", *QUICK, "--sample"]) == 130
    message = _lines(capfd.readouterr().err)[-1]
    written = sorted(p.name for p in (square / "embeddings").iterdir())
    assert "square-all.safetensors" in written and not any(name.endswith(".png") for name in written)
    assert message.startswith("captinv: interrupted; already written in ") and "nothing else" in message
    assert all(name in message for name in written)


def test_files_get_the_users_permissions_and_identical_runs_identical_bytes(square, capfd):
    """Before: embedding files were 0600 (mkstemp) and metadata came in a random order."""
    old = os.umask(0o022)
    try:
        for out in ("one", "two"):
            assert cli.main(["invert", "square.png", *QUICK, "--out", out]) == 0
    finally:
        os.umask(old)
    one, two = sorted((square / "one").iterdir()), sorted((square / "two").iterdir())
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 8
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
    assert {stat.S_IMODE(p.stat().st_mode) for p in one} == {0o644}


def test_a_bug_shows_its_traceback_and_says_it_is_a_bug(square, monkeypatch, capfd):
    def broken(*args, **kwargs):
        raise RuntimeError("something captinv did not expect")

    monkeypatch.setattr(DiffusersBackend, "load", broken)
    assert cli.main(["invert", "square.png", *QUICK]) == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and "RuntimeError: something captinv did not expect" in err
    assert _lines(err)[-1].startswith("captinv: internal error: this is a bug in captinv")


def test_out_of_memory_is_one_line_with_what_to_try(square, monkeypatch, capfd):
    def full(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(DiffusersBackend, "load", full)
    assert cli.main(["invert", "square.png", *QUICK]) == 2
    assert _lines(capfd.readouterr().err)[-1] == (
        "captinv: error: out of GPU memory; try --batch-size 1 --gradient-checkpointing."
    )


def test_a_refused_perfusion_run_creates_no_covariance_folder(square, capfd):
    """Before: a refused run left an empty perfusion/covariance/ folder behind."""
    (square / "perfusion").mkdir()
    (square / "perfusion" / "square.safetensors").write_bytes(b"taken")
    assert cli.main(["perfusion", "square.png", *QUICK]) == 2
    assert "An embedding named 'square' already exists" in capfd.readouterr().err
    assert sorted(p.name for p in (square / "perfusion").iterdir()) == ["square.safetensors"]


def test_ctrl_c_after_the_covariance_was_cached_names_its_file(square, monkeypatch, capfd):
    """Before: "nothing was written", although the first run on a model had cached its covariance."""
    from captinv.trainer import Trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", interrupted)
    assert cli.main(["perfusion", "square.png", *QUICK, "--covariance-prompts", "16"]) == 130
    message = _lines(capfd.readouterr().err)[-1]
    (cached,) = (square / "perfusion" / "covariance").iterdir()
    assert message.startswith("captinv: interrupted; already written in ") and cached.name in message
    assert sorted(p.name for p in (square / "perfusion").iterdir()) == ["covariance"]


def test_captioning_with_a_local_blip_prints_only_the_caption(chelsea, tmp_path):
    """Before: transformers' "Using a slow image processor" note, and under CI=true (which makes
    transformers hand its records to the root logger too) every warning twice."""
    chelsea.save(tmp_path / "kitty.png")
    (tmp_path / "blip").mkdir()
    blip = factories.tiny_blip(tmp_path / "blip", "cat")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, CI="true")
    done = subprocess.run(
        [sys.executable, "-m", "captinv", "caption", "kitty.png", "--captioner", blip, "--caption-max-tokens", "3"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cat", "cat", "cat"] and done.stderr.strip() == ""


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not re.search(r"\d+%\|", line)]


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


def test_one_ctrl_c_saves_what_was_learned_so_far(saved_model, tmp_path):
    """The whole way: a real SIGINT to a running `captinv invert`, which then writes its set."""
    import signal

    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "red.png")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    argv = ["invert", "red.png", "--model", str(saved_model), "--init", "text", "--text", "a red cat",
            "--steps", "2000", "--no-auto-stop", "--resolution", "256", "--out", "emb"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "captinv", *argv], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    seen = ""
    while " 1/2000" not in seen:  # the bar after the first step: training has begun
        char = process.stderr.read(1)
        assert char, seen
        seen += char
    process.send_signal(signal.SIGINT)
    seen += process.communicate(timeout=300)[1]
    assert process.returncode == 0, seen
    assert "Ctrl-C again: cancel" in seen and "on request; saved what was learned so far" in seen
    shown = _run("inspect", str(tmp_path / "emb" / "red-all.safetensors"), cwd=tmp_path)
    assert "stop_reason = stopped" in shown.stdout and "max_steps = 2000" in shown.stdout
    steps = int(re.search(r"^\s*steps = (\d+)$", shown.stdout, re.M).group(1))
    assert 1 <= steps < 2000


def test_ctrl_c_cancels_before_the_first_step_and_on_a_second_press(sd1):
    """The handler's three answers, in this process: nothing to keep yet -> cancel; once -> stop
    and save; twice -> cancel. (Two real signals can arrive as one, so a subprocess cannot tell.)"""
    import signal

    from captinv.trainer import Progress

    config = cli._options(cli._parser().parse_args(["invert", "x.png", "--model", "m"]))
    with cli._progress(10, sd1, config, "a cat") as callbacks:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # before the first step
        callbacks.progress(Progress(1, 10, 0.5, 0.005, 1.0, 9.0))
        signal.raise_signal(signal.SIGINT)
        assert callbacks.should_stop() and callbacks.save_on_stop()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back afterwards
