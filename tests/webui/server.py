"""Start a real WebUI (AUTOMATIC1111, Forge or reForge) offline on the CPU with captinv installed
as "Install from URL" does.

Used by the host-tier tests (tests/webui/conftest.py) and by `bench.webui_trainer`. Everything
it creates (checkpoint, Hugging Face cache, data dir with extensions/ and embeddings/) lives in
the folder it is given (full-width checkpoints of the Forge family in a cache, see hosts.py); the
WebUI checkout itself is not modified. The extension is a `git clone` of this repository's
committed HEAD.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.webui.clip_cache import prepare_clip_cache
from tests.webui.hosts import HostKind

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 900


class StartError(RuntimeError):
    pass


@dataclass
class Server:
    host: HostKind
    family: str
    url: str
    data: Path
    log: Path
    checkpoint: Path

    @property
    def width(self) -> int:
        """The embedding "shape" this host reports for this family."""
        return self.host.widths[self.family]

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


STARTED = "Startup time:"


def _wait_until_started(server: Server, process: subprocess.Popen) -> None:
    """Wait for the WebUI's `Startup time:` line, then for its API.

    The port listens before start-up ends, and an HTTP request served between gradio's launch and
    the API's middleware kills A1111's start-up ("Cannot add middleware after an application has
    started"); every route and callback exists once that line is printed.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        if STARTED in server.log.read_text(errors="replace"):
            break
        time.sleep(1)
    else:
        raise StartError(f"the WebUI did not start; see {server.log}:\n{server.log.read_text()[-3000:]}")
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if server.call("/sdapi/v1/sd-models", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise StartError(f"the WebUI's API did not answer; see {server.log}:\n{server.log.read_text()[-3000:]}")


@contextmanager
def start_webui(
    host: HostKind,
    webui: Path,
    family: str,
    folder: Path,
    full: bool = False,
    flags: Sequence[str] = (),
) -> Iterator[Server]:
    """A running `host` WebUI from the checkout `webui` on a random-weight `family` checkpoint
    (tiny, or SD1's real sizes when `full`), bound to loopback, with `flags` added to its command
    line; stopped on exit."""
    env = os.environ | {
        "HF_HOME": str(prepare_clip_cache(folder / "hf", full=full)),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PYTHONPATH", None)
    checkpoint = host.checkpoint(webui, family, folder / "models", env, full=full)
    data = folder / "data"
    (data / "embeddings").mkdir(parents=True)
    # Live previews would download the approximate-VAE weights during sampling; there is no network.
    (data / "config.json").write_text(json.dumps({"live_previews_enable": False}))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(data / "extensions" / "captinv")], check=True)
    port = _free_port()
    log = folder / "webui.log"
    command = [host.python(webui), "launch.py", *flags, *host.launch_flags(webui), "--api"]
    command += ["--data-dir", str(data), "--ckpt", str(checkpoint.resolve()), "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=webui, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(host, family, f"http://127.0.0.1:{port}", data, log, checkpoint)
    try:
        _wait_until_started(server, process)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=60)
