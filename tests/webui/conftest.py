"""A real WebUI, started offline on the CPU with captinv installed as "Install from URL" does.

Needs a WebUI checkout with its venv and repositories/ in CAPTINV_WEBUI_DIR (set up by hand,
outside this repository; CAPTINV_WEBUI_PYTHON overrides `<dir>/venv/bin/python`). See
tests/webui/server.py for what is created and where.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.webui.server import StartError, start_webui

WEBUI = os.environ.get("CAPTINV_WEBUI_DIR")


@pytest.fixture(scope="session", params=["sd1", "sdxl"])
def server(request, tmp_path_factory):
    if not WEBUI:
        pytest.skip(
            "CAPTINV_WEBUI_DIR is not set: these tests need a real WebUI checkout (see tests/webui/conftest.py)"
        )
    try:
        with start_webui(Path(WEBUI), request.param, tmp_path_factory.mktemp("webui")) as running:
            yield running
    except StartError as err:
        pytest.fail(str(err))
