"""A real WebUI, started offline on the CPU with captinv installed as "Install from URL" does.

Needs a WebUI checkout with its venv and repositories/ in CAPTINV_WEBUI_DIR (set up by hand,
outside this repository; CAPTINV_WEBUI_PYTHON overrides `<dir>/venv/bin/python`). Everything the
tests create (checkpoint, Hugging Face cache, data dir with extensions/ and embeddings/) lives
in a temporary folder; the WebUI checkout itself is not modified. The extension is a `git
clone` of this repository's committed HEAD.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.webui.clip_cache import prepare_clip_cache

ROOT = Path(__file__).resolve().parents[2]
WEBUI = os.environ.get("CAPTINV_WEBUI_DIR")
START_TIMEOUT = 600


WIDTHS = {"sd1": 768, "sdxl": 768 + 1280}  # the WebUI's embedding "shape" per family


@dataclass
class Server:
    family: str
    url: str
    data: Path
    log: Path

    @property
    def width(self) -> int:
        return WIDTHS[self.family]

    def call(self, path: str, body: dict | None = None, timeout: float = 900) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session", params=["sd1", "sdxl"])
def server(request, tmp_path_factory):
    family = request.param
    if not WEBUI:
        pytest.skip(
            "CAPTINV_WEBUI_DIR is not set: these tests need a real WebUI checkout (see tests/webui/conftest.py)"
        )
    webui = Path(WEBUI)
    python = os.environ.get("CAPTINV_WEBUI_PYTHON", str(webui / "venv" / "bin" / "python"))
    tmp = tmp_path_factory.mktemp("webui")
    env = os.environ | {
        "HF_HOME": str(prepare_clip_cache(tmp / "hf")),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PYTHONPATH", None)
    checkpoint = tmp / "models" / f"tiny-{family}"
    subprocess.run(
        [
            python,
            str(ROOT / "tests" / "webui" / "make_tiny_checkpoint.py"),
            "--webui",
            str(webui),
            "--family",
            family,
            "--out",
            str(checkpoint),
        ],
        cwd=webui,
        env=env,
        check=True,
        capture_output=True,
    )
    data = tmp / "data"
    (data / "embeddings").mkdir(parents=True)
    # Live previews would download the approximate-VAE weights during sampling; there is no network.
    (data / "config.json").write_text(json.dumps({"live_previews_enable": False}))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(data / "extensions" / "captinv")], check=True)
    port = _free_port()
    log = tmp / "webui.log"
    flags = [
        "--skip-prepare-environment",
        "--skip-install",
        "--skip-torch-cuda-test",
        "--skip-version-check",
        "--no-download-sd-model",
        "--use-cpu",
        "all",
        "--no-half",
        "--precision",
        "full",
        "--api",
        "--data-dir",
        str(data),
        "--ckpt",
        str(checkpoint.with_suffix(".safetensors")),
        "--port",
        str(port),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(
            [python, "launch.py", *flags], cwd=webui, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(family, f"http://127.0.0.1:{port}", data, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if server.call("/sdapi/v1/sd-models", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(2)
        else:
            pytest.fail(f"the WebUI did not start; see {log}:\n{log.read_text()[-3000:]}")
        yield server
    finally:
        process.terminate()
        process.wait(timeout=60)
