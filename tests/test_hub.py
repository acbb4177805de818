"""Is the hub there? An HTTP answer within seconds, through the environment's proxies."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from captinv import hub


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[str]:
    """A local HTTP server that answers every request (as the hub, or as a proxy would)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "NO_PROXY",
        "no_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    hub._answers.cache_clear()
    yield
    hub._answers.cache_clear()


def test_an_endpoint_that_answers_is_reachable(answering, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", answering)
    assert hub.hub_reachable()


def test_the_hub_behind_a_proxy_is_reached_through_it(answering, monkeypatch):
    """Before: a bare TCP connection to the hub's own address, so users behind a proxy were refused."""
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.captinv.invalid")  # no such name: only the proxy knows
    monkeypatch.setenv("HTTP_PROXY", answering)
    assert hub.hub_reachable()


def test_a_port_that_accepts_but_never_answers_is_away(monkeypatch):
    """Before: any accepted connection counted as the hub, and the loader then failed later."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    monkeypatch.setattr(hub, "HUB_TIMEOUT", 0.5)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        assert not hub.hub_reachable()
    finally:
        listener.close()


def test_offline_mode_is_away_without_asking(answering, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", answering)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub.hub_reachable()
