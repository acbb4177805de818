"""Bad input, as a user types it: one line on stderr, exit 2, no traceback, nothing changed.

One row per bad input: a name, the command line, a piece of the one-line
message, and (where the HTTP API takes the same input) the request fields. Each
row runs in a fresh copy of a small world folder (mini-world photos with
caption files, broken and foreign files, a folder where a name is taken) and
the whole folder must be byte-identical afterwards: a refused run creates
nothing. Rows marked `process=True` run the real CLI in a subprocess; the
others call `captinv.__main__.main` in this process (the same code, without
paying for an interpreter and its imports each time). Add a row to add a case.
"""

from __future__ import annotations

import base64
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from captinv import __main__ as cli
from captinv.backends.diffusers_backend import DiffusersBackend
from captinv.config import InvertConfig, PerfusionOptions
from captinv.errors import CaptinvError
from captinv.images import load_image
from captinv.perfusion.concept import PerfusionConcept
from captinv.webui import schema

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "miniworld-green-square"
M = ("--model", "miniworld")
UNWRITABLE = Path("/sys/kernel/captinv-test")  # not writable even for root (or read-only in containers)


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    message: str  # a piece of the one line on stderr
    process: bool = False  # run as a real subprocess
    api: dict | None = None  # the same input as HTTP API request fields, where the API takes it
    kind: str = "invert"  # which API request: invert or perfusion
    api_message: str | None = None  # when the API words it otherwise than `message` with field names


def case(name: str, *argv: str, message: str, **extra) -> Case:
    return Case(name, argv, message, **extra)


CASES = [
    # --- invert: images -------------------------------------------------------------------------
    case("image missing", "invert", "nothere.png", *M, message="Image file not found: nothere.png", process=True),
    case("not an image", "invert", "broken.png", *M, message="broken.png is not an image file. Use a PNG, JPEG or WebP file.", api={"image": "broken.png"}, api_message="The image is not an image file"),
    case("truncated image", "invert", "truncated.jpg", *M, message="Could not read truncated.jpg ("),
    case("image too small", "invert", "tiny.png", *M, message="tiny.png is 32x32; it needs at least 64 px per side", api={"image": "tiny.png"}, api_message="The image is 32x32; it needs at least 64 px per side"),
    case("image too large", "invert", "huge.png", *M, message="huge.png has 400 megapixels; captinv reads images up to 150 megapixels", process=True),
    case("image is a folder", "invert", "folder", *M, message="folder is a folder; give image files"),
    case("file name without letters", "invert", "___.png", *M, message="'___' has no letters or digits"),
    # --- invert: options ------------------------------------------------------------------------
    case("steps 0", "invert", "square.png", *M, "--steps", "0", message="--steps must be a whole number of at least 1; got 0", process=True, api={"steps": 0}),
    case("steps not a number", "invert", "square.png", *M, "--steps", "ten", message="argument --steps: invalid int value: 'ten'", process=True),
    case("learning rate nan", "invert", "square.png", *M, "--learning-rate", "nan", message="--learning-rate must be a finite number above 0; got nan", api={"learning_rate": float("nan")}),
    case("learning rate inf", "invert", "square.png", *M, "--learning-rate", "inf", message="--learning-rate must be a finite number above 0; got inf", api={"learning_rate": float("inf")}),
    case("learning rate 0", "invert", "square.png", *M, "--learning-rate", "0", message="--learning-rate must be a finite number above 0; got 0.0", api={"learning_rate": 0.0}),
    case("learning rate negative", "invert", "square.png", *M, "--learning-rate", "-0.1", message="--learning-rate must be a finite number above 0; got -0.1", api={"learning_rate": -0.1}),
    case("batch size 0", "invert", "square.png", *M, "--batch-size", "0", message="--batch-size must be a whole number of at least 1; got 0", api={"batch_size": 0}),
    case("resolution not a multiple of 64", "invert", "square.png", *M, "--resolution", "100", message="--resolution must be a multiple of 64 from 64 to 4096, or none for the model's; got 100", api={"resolution": 100}),
    case("resolution 0", "invert", "square.png", *M, "--resolution", "0", message="--resolution must be a multiple of 64", api={"resolution": 0}),
    case("max grad norm 0", "invert", "square.png", *M, "--max-grad-norm", "0", message="--max-grad-norm must be a finite number above 0, or none for no clipping; got 0.0", process=True, api={"max_grad_norm": 0.0}),
    case("max grad norm nan", "invert", "square.png", *M, "--max-grad-norm", "nan", message="--max-grad-norm must be a finite number above 0", api={"max_grad_norm": float("nan")}),
    case("max grad norm word", "invert", "square.png", *M, "--max-grad-norm", "off", message="argument --max-grad-norm: invalid float value: 'off'"),
    case("warm-up not shorter than the run", "invert", "square.png", *M, "--steps", "5", "--warmup-steps", "5", message="--warmup-steps (5) must be smaller than --steps (5)", api={"steps": 5, "warmup_steps": 5}),
    case("init-l2 negative", "invert", "square.png", *M, "--init-l2", "-1", message="--init-l2 must be a finite number of at least 0.0; got -1.0", api={"init_l2": -1.0}),
    case("vectors per word 0", "invert", "square.png", *M, "--vectors-per-word", "0", message="--vectors-per-word must be a whole number from 1 to 75", api={"vectors_per_word": 0}),
    case("vectors per word 100", "invert", "square.png", *M, "--vectors-per-word", "100", message="--vectors-per-word must be a whole number from 1 to 75, or none for one per token; got 100", api={"vectors_per_word": 100}),
    case("random crops negative", "invert", "square.png", *M, "--random-crops", "-2", message="--random-crops must be a whole number of at least 0; got -2", api={"random_crops": -2}),
    case("seed negative", "invert", "square.png", *M, "--seed", "-1", message="--seed must be a whole number from 0 to 4294967295; got -1", api={"seed": -1}),
    case("caption beams 0", "invert", "nocap.png", *M, "--caption-beams", "0", message="--caption-beams must be a whole number of at least 1; got 0", api={"caption_beams": 0}),
    case("unknown schedule", "invert", "square.png", *M, "--lr-schedule", "exp", message="argument --lr-schedule: invalid choice: 'exp'", api={"lr_schedule": "exp"}, api_message="lr_schedule must be one of constant, linear, cosine; got 'exp'"),
    case("unknown init", "invert", "square.png", *M, "--init", "guess", message="argument --init: invalid choice: 'guess'"),
    case("unknown option", "invert", "square.png", *M, "--colour", "red", message="unrecognized arguments: --colour red"),
    # --- invert: text and names -----------------------------------------------------------------
    case("init text without text", "invert", "square.png", *M, "--init", "text", message="--init text needs the init text in --text"),
    case("text empty", "invert", "square.png", *M, "--text", "", message="--text is empty; type some text or leave it out", process=True),
    case("text blank", "invert", "square.png", *M, "--text", "   ", message="--text is empty; type some text or leave it out"),
    case("text of function words only", "invert", "square.png", *M, "--text", "a the of", "--no-train-function-words", message="Every word of the init text is a function word"),
    case("text too long for a prompt", "invert", "square.png", *M, "--text", "cat " * 80, message="needs 80 vectors but a prompt holds at most 75"),
    case("caption file empty", "invert", "blank.png", *M, message="The caption file blank.txt is empty"),
    case("name without letters", "invert", "square.png", *M, "--name", "!!!", message="'!!!' has no letters or digits to make a name from; give a name such as 'my-cat' in --name", api={"name": "!!!"}),
    case("name empty", "invert", "square.png", *M, "--name", "", message="--name is empty", api={"name": ""}),
    case("name taken", "invert", "square.png", *M, "--out", "taken", message="An embedding named 'square-all' already exists. Choose another --name, or pass --overwrite", process=True),
    case("name clashes in prompts", "invert", "square.png", *M, "--out", "prefix", "--text", "a green square", message="'square-all' and the existing embedding 'square' would be confused in prompts"),
    case("name clash found once the caption file is read", "invert", "square.png", *M, "--out", "prefix", message="'square-all' and the existing embedding 'square' would be confused in prompts"),
    case("start from a missing set", "invert", "square.png", *M, "--start-from", "gone-all.safetensors", message="--start-from: gone-all.safetensors not found (give a set's combined file"),
    case("start from a plain embedding", "invert", "square.png", *M, "--start-from", "one.safetensors", message="one.safetensors was not made by a captinv caption inversion"),
    # --- invert: where things come from and go --------------------------------------------------
    case("model folder missing", "invert", "square.png", "--model", "./no-such-model", message="The model './no-such-model' was not found (no such folder or file)", process=True),
    case("model id not downloaded offline", "invert", "square.png", "--model", "someone/some-model", message="The model 'someone/some-model' is not downloaded and offline mode is set"),
    case("captioner not downloaded offline", "invert", "nocap.png", *M, message="The captioner 'Salesforce/blip-image-captioning-large' is not downloaded and offline mode is set", process=True),
    case("captioner folder missing", "invert", "nocap.png", *M, "--captioner", "./no-blip", message="The captioner './no-blip' was not found"),
    case("classifier not downloaded offline", "invert", "nocap.png", *M, "--init", "classify", message="The classifier 'google/vit-base-patch16-224' is not downloaded"),
    case("device not there", "invert", "square.png", *M, "--device", "cuda:7", message="--device 'cuda:7' is not available on this machine"),
    case("device not a device", "invert", "square.png", *M, "--device", "gpu", message="--device 'gpu' is not a device"),
    case("out is a file", "invert", "square.png", *M, "--out", "notes.txt", message="Cannot write to notes.txt: it is a file, not a folder", process=True),
    case("out below a file", "invert", "square.png", *M, "--out", "notes.txt/emb", message="Cannot write to notes.txt/emb: notes.txt is a file"),
    case("out not writable", "invert", "square.png", *M, "--out", str(UNWRITABLE), message=f"Cannot write to {UNWRITABLE} ("),
    # --- perfusion ------------------------------------------------------------------------------
    case("superclass of two words", "perfusion", "square.png", *M, "--superclass", "tabby cat", message="--superclass must be one word, e.g. 'cat'; got 'tabby cat'", kind="perfusion", api={"superclass": "tabby cat"}),
    case("tau 0", "perfusion", "square.png", *M, "--tau", "0", message="--tau must be a finite number from 0.01 to 0.5; got 0.0", kind="perfusion", api={"tau": 0.0}),
    case("beta nan", "perfusion", "square.png", *M, "--beta", "nan", message="--beta must be a finite number from 0.0 to 1.0; got nan", process=True, kind="perfusion", api={"beta": float("nan")}),
    case("value learning rate 0", "perfusion", "square.png", *M, "--value-learning-rate", "0", message="--value-learning-rate must be a finite number above 0", kind="perfusion", api={"value_learning_rate": 0.0}),
    case("covariance prompts too few", "perfusion", "square.png", *M, "--covariance-prompts", "5", message="--covariance-prompts must be a whole number from 16 to 100000; got 5", kind="perfusion", api={"covariance_prompts": 5}),
    case("no content word for the superclass", "perfusion", "square.png", *M, "--text", "a the", message="no content word to take as the superclass"),
    case("concept name taken", "perfusion", "square.png", *M, "--out", "concepts", message="An embedding named 'square' already exists", process=True),
    case("covariance cache is a file", "perfusion", "square.png", *M, "--covariance-cache", "notes.txt", message="Cannot write to notes.txt: it is a file"),
    case("covariance captions missing", "perfusion", "square.png", *M, "--covariance-captions", "nothere.txt", message="No caption file or folder at nothere.txt (--covariance-captions)."),
    case("covariance captions empty", "perfusion", "square.png", *M, "--covariance-captions", "blank.txt", message="blank.txt holds no captions; give --covariance-captions a text file"),
    case("option of caption inversion only", "perfusion", "square.png", *M, "--vectors-per-word", "2", message="unrecognized arguments: --vectors-per-word 2"),
    case("continuing a set in perfusion", "perfusion", "square.png", *M, "--start-from", "one.safetensors", message="unrecognized arguments: --start-from one.safetensors"),
    # --- generate -------------------------------------------------------------------------------
    case("embedding missing", "generate", "a cat", *M, "--embedding", "nothere.safetensors", message="No such file: nothere.safetensors", process=True),
    case("embedding not safetensors", "generate", "a cat", *M, "--embedding", "garbage.safetensors", message="garbage.safetensors is not a readable safetensors file"),
    case("embedding of foreign keys", "generate", "a cat", *M, "--embedding", "foreign.safetensors", message="foreign.safetensors is not an embedding: found keys"),
    case("embedding pickle with code", "generate", "a cat", *M, "--embedding", "evil.pt", message="evil.pt could not be read safely"),
    case("embedding that is a text file", "generate", "a cat", *M, "--embedding", "notes.txt", message="notes.txt is not an embedding file; give a .safetensors, .pt or .bin embedding."),
    case("covariance cache as embedding", "generate", "a cat", *M, "--embedding", "covariance.safetensors", message="covariance.safetensors is Perfusion's cached text-encoding covariance, not an embedding."),
    case("concept given as embedding", "generate", "a cat", *M, "--embedding", "kitty.safetensors", message="kitty.safetensors is a Perfusion concept, not an embedding"),
    case("embedding given as concept", "generate", "a cat", *M, "--concept", "wide.safetensors", message="wide.safetensors is not a captinv Perfusion concept"),
    case("concept missing", "generate", "a cat", *M, "--concept", "nothere.safetensors", message="No such file: nothere.safetensors"),
    case("concept beta not a number", "generate", "a cat", *M, "--concept", "kitty.safetensors:strong", message="--concept kitty.safetensors:strong: β must be a number, got 'strong'."),
    case("concept beta nan", "generate", "a cat", *M, "--concept", "kitty.safetensors:nan", message="β must be a number from 0 to 1, got nan"),
    case("embedding for another model", "generate", "a cat", *M, "--embedding", "wide.safetensors", message="wide: 'emb_params' has shape [1, 768] but this model needs [n, 64]"),
    case("concept for another model", "generate", "a kitty", *M, "--concept", "kitty.safetensors", message="kitty: 'emb_params' has shape [1, 768] but this model needs [n, 64]"),
    case("two embeddings of one name", "generate", "a cat", *M, "--embedding", "one.safetensors", "--embedding", "folder/one.safetensors", message="More than one embedding or concept is named one"),
    case("generate steps 0", "generate", "a cat", *M, "--steps", "0", message="--steps must be a whole number from 1 to 1000; got 0"),
    case("guidance nan", "generate", "a cat", *M, "--guidance", "nan", message="--guidance must be a finite number of at least 0; got nan"),
    case("image name not an image", "generate", "a cat", *M, "--out", "picture.gif", message="give an image file name ending in .png"),
    case("image name is a folder", "generate", "a cat", *M, "--out", "shelf.png", message="--out shelf.png is a folder"),
    # --- inspect --------------------------------------------------------------------------------
    case("inspect missing", "inspect", "nothere.safetensors", message="No such file: nothere.safetensors", process=True),
    case("inspect garbage", "inspect", "garbage.safetensors", message="garbage.safetensors is not a readable safetensors file"),
    case("inspect empty file", "inspect", "empty.safetensors", message="empty.safetensors is not a readable safetensors file"),
    case("inspect foreign", "inspect", "foreign.safetensors", message="is not an embedding: found keys ['a', 'b', 'c']"),
    case("inspect pickle with code", "inspect", "evil.pt", message="evil.pt could not be read safely"),
    case("inspect pickle of a tensor", "inspect", "tensor.pt", message="tensor.pt is not an embedding (it holds a Tensor)"),
    case("inspect a folder", "inspect", "folder", message="folder is a folder"),
    case("inspect an image", "inspect", "square.png", message="square.png is not an embedding file; give a .safetensors, .pt or .bin embedding."),
    case("inspect the covariance cache", "inspect", "covariance.safetensors", message="covariance.safetensors is Perfusion's cached text-encoding covariance, not an embedding."),
    # --- caption --------------------------------------------------------------------------------
    case("caption init text", "caption", "square.png", "--init", "text", message="argument --init: invalid choice: 'text'"),
    case("caption with --text", "caption", "square.png", "--text", "hi", message="unrecognized arguments: --text hi"),
    case("caption image missing", "caption", "nothere.png", message="Image file not found: nothere.png"),
    case("caption offline", "caption", "nocap.png", message="is not downloaded and offline mode is set (HF_HUB_OFFLINE). Give a local BLIP folder with --captioner, or write the caption yourself (a .txt caption file beside the image)", process=True),
    case("caption max tokens 0", "caption", "nocap.png", "--caption-max-tokens", "0", message="--caption-max-tokens must be a whole number from 1 to 512; got 0", api={"caption_max_tokens": 0}),
    # --- the command itself ---------------------------------------------------------------------
    case("no command", message="the following arguments are required: COMMAND", process=True),
    case("unknown command", "train", message="argument COMMAND: invalid choice: 'train'"),
]  # fmt: skip


def _png(path: Path, size: tuple[int, int]) -> None:
    Image.new("RGB", size, (40, 160, 60)).save(path)


def _huge_png(path: Path, side: int = 20_000) -> None:
    """A PNG header that claims side x side pixels; the pixels are never decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _concept(width: int) -> PerfusionConcept:
    generator = torch.Generator().manual_seed(0)
    i_star = torch.randn(width, generator=generator)
    return PerfusionConcept(
        name="kitty",
        superclass="cat",
        embedding={"emb_params": torch.randn(1, width, generator=generator)},
        i_star=i_star,
        c_inv_i_star=i_star.clone(),
        i_super=torch.randn(width, generator=generator),
        v_targets={
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2": torch.randn(320, generator=generator)
        },
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The folder every row starts from."""
    root = tmp_path_factory.mktemp("world")
    image = EXAMPLE.with_suffix(".png")
    shutil.copy(image, root / "square.png")
    shutil.copy(EXAMPLE.with_suffix(".txt"), root / "square.txt")  # its caption: no captioner needed
    shutil.copy(image, root / "nocap.png")
    shutil.copy(image, root / "___.png")
    shutil.copy(image, root / "blank.png")
    (root / "blank.txt").write_text("  \n")
    (root / "broken.png").write_bytes(b"this is not an image")
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), "red").save(buffer, format="JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    _png(root / "tiny.png", (32, 32))
    _huge_png(root / "huge.png")
    (root / "folder").mkdir()
    (root / "shelf.png").mkdir()
    (root / "notes.txt").write_text("a file where a folder should be\n")
    (root / "garbage.safetensors").write_bytes(b"\x00garbage" * 8)
    (root / "empty.safetensors").write_bytes(b"")
    save_file({k: torch.zeros(2) for k in "abc"}, root / "foreign.safetensors")
    save_file({"emb_params": torch.randn(1, 768)}, root / "wide.safetensors")
    save_file({"emb_params": torch.randn(1, 64)}, root / "one.safetensors")
    save_file({"emb_params": torch.randn(1, 64)}, root / "folder" / "one.safetensors")
    (root / "evil.pt").write_bytes(pickle.dumps({"string_to_param": _Evil()}))
    torch.save(torch.zeros(3), root / "tensor.pt")
    _concept(768).save(root / "kitty.safetensors")
    save_file(
        {"covariance": torch.eye(4)},
        root / "covariance.safetensors",
        {"format": "captinv.perfusion.covariance"},
    )
    for folder, name in (("taken", "square-all"), ("concepts", "square"), ("prefix", "square")):
        (root / folder).mkdir()
        save_file({"emb_params": torch.randn(1, 64)}, root / folder / f"{name}.safetensors")
    return root


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {
        str(path.relative_to(folder)): (path.read_bytes() if path.is_file() else None)
        for path in sorted(folder.rglob("*"))
    }


_PROGRESS = re.compile(r"\d+%\|")


def _message_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines, progress bars left out."""
    return [line for line in stderr.splitlines() if line.strip() and not _PROGRESS.search(line)]


@pytest.fixture(scope="module")
def loaded_once():
    """In-process rows that get as far as loading the mini world share one load (the files are the
    same each time, and a refused run leaves the model as it found it)."""
    cache: dict[tuple, DiffusersBackend] = {}
    load = DiffusersBackend.load.__func__

    def cached(cls, spec, device=None, dtype=None, **options):
        key = (spec, str(device), dtype, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = load(cls, spec, device=device, dtype=dtype, **options)
        return cache[key]

    return classmethod(cached)


@pytest.mark.parametrize("row", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    row: Case, world, tmp_path, monkeypatch, capfd, loaded_once
):
    if str(UNWRITABLE) in row.argv and not UNWRITABLE.parent.is_dir():
        pytest.skip(f"{UNWRITABLE.parent} does not exist here")
    folder = tmp_path / "world"
    shutil.copytree(world, folder)
    before = _snapshot(folder)
    if row.process:
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
        done = subprocess.run(
            [sys.executable, "-m", "captinv", *row.argv], cwd=folder, env=env, capture_output=True, text=True
        )
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.chdir(folder)
        monkeypatch.setattr(DiffusersBackend, "load", loaded_once)
        try:
            code = cli.main(list(row.argv))
        except SystemExit as exit_:  # argparse
            code = exit_.code
        stdout, stderr = capfd.readouterr()
    assert "Traceback" not in stderr, stderr
    assert code == 2, stderr
    lines = _message_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("captinv: error: ") and row.message in lines[0], lines[0]
    assert stdout == ""
    assert _snapshot(folder) == before


def test_the_table_covers_every_command_with_30_distinct_inputs():
    assert len({c.name for c in CASES}) == len(CASES) >= 30
    assert {c.argv[0] for c in CASES if c.argv} >= {"invert", "perfusion", "generate", "caption", "inspect"}
    assert sum(c.process for c in CASES) >= 15


# --- the same inputs through the HTTP API's schema -----------------------------------------------

API_CASES = [c for c in CASES if c.api is not None]


def _api_words(message: str) -> str:
    """The CLI's message in the API's words: --learning-rate -> learning_rate."""
    return re.sub(r"--([a-z][a-z-]*)", lambda found: found.group(1).replace("-", "_"), message)


def _api_app() -> FastAPI:
    """The API's contract for a bad request, as the WebUI's routes answer it: a 4xx with the
    message, before any work (the routes themselves need a running WebUI: tests/webui)."""
    app = FastAPI()

    def check(request, kind: str) -> dict:
        try:
            schema.check_refused(request, kind)
            for data in schema.request_images(request):
                load_image(data)
            schema.checked_options(request, InvertConfig)
            if kind == "perfusion":
                schema.checked_options(request, PerfusionOptions)
        except CaptinvError as err:
            raise HTTPException(status_code=err.http_status, detail=schema.error_detail(err)) from err
        return {"ok": True}

    @app.post("/invert")
    def invert(request: schema.InvertRequest):
        return check(request, "invert")

    @app.post("/perfusion")
    def perfusion(request: schema.PerfusionRequest):
        return check(request, "perfusion")

    return app


@pytest.mark.parametrize("row", API_CASES, ids=[c.name for c in API_CASES])
def test_the_same_bad_input_through_the_api_is_a_400_with_the_same_message(row: Case, world):
    fields = dict(row.api)
    image = world / fields.pop("image", "square.png")
    body = {"image": base64.b64encode(image.read_bytes()).decode()} | fields
    answer = TestClient(_api_app()).post(f"/{row.kind}", content=_json(body))
    assert answer.status_code == 400, answer.text
    assert (row.api_message or _api_words(row.message)) in answer.json()["detail"], answer.json()


def _json(body: dict) -> str:
    import json

    return json.dumps(body)  # NaN and Infinity as JavaScript writes them, which the API accepts


def test_the_api_checks_pass_a_good_request_and_none_turns_clipping_off(world):
    image = base64.b64encode((world / "square.png").read_bytes()).decode()
    client = TestClient(_api_app())
    assert client.post("/invert", json={"image": image, "steps": 5}).status_code == 200
    request = schema.InvertRequest(image=image, max_grad_norm=None)
    assert schema.checked_options(request).max_grad_norm is None
    assert schema.checked_options(schema.InvertRequest(image=image)).max_grad_norm == 1.0


@pytest.mark.parametrize(
    ("route", "field", "value", "message"),
    [
        ("invert", "beta", 0.5, "'beta' is a Perfusion option; send it to /captinv/v1/perfusion."),
        ("invert", "init", "classify", "the API takes the init text as 'caption'"),
        ("perfusion", "vectors_per_word", 1, "'vectors_per_word' is a caption-inversion option"),
        ("perfusion", "init", "text", "where it comes from as 'source'"),
        ("perfusion", "continue_from", "cat-all", "'continue_from' is a caption-inversion option"),
        ("invert", "start_from", "/etc/passwd", "by 'continue_from' (its NAME-all), not by a path"),
    ],
)
def test_the_api_refuses_options_of_the_other_route_and_init(world, route, field, value, message):
    """Before: `init` was silently replaced by `source`, and the other mode's options were dropped."""
    image = base64.b64encode((world / "square.png").read_bytes()).decode()
    answer = TestClient(_api_app()).post(f"/{route}", json={"image": image, field: value})
    assert answer.status_code == 400 and message in answer.json()["detail"], answer.text


def test_the_api_takes_several_images_or_one(world):
    image = base64.b64encode((world / "square.png").read_bytes()).decode()
    client = TestClient(_api_app())
    assert client.post("/invert", json={"images": [image, image, image]}).status_code == 200
    both = client.post("/invert", json={"image": image, "images": [image]})
    assert both.status_code == 400 and "not both" in both.json()["detail"]
    broken = client.post("/invert", json={"images": [image, base64.b64encode(b"nope").decode()]})
    assert broken.status_code == 400 and "not an image file" in broken.json()["detail"]
    none = client.post("/invert", json={})
    assert none.status_code == 400 and "No image given" in none.json()["detail"]
