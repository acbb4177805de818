"""The host tier: a real WebUI (AUTOMATIC1111, Forge, reForge), started offline on the CPU with
captinv installed as "Install from URL" does, once per host and model family.

Each host is a checkout set up by hand outside this repository, with its venv/ and
repositories/, named by CAPTINV_WEBUI_DIR (AUTOMATIC1111), CAPTINV_FORGE_DIR or
CAPTINV_REFORGE_DIR; hosts whose variable is unset are skipped with that reason. See
tests/webui/hosts.py and server.py for what is created and where.
"""

from __future__ import annotations

import pytest

from tests.webui.hosts import HOSTS
from tests.webui.server import StartError, start_webui

PARAMS = [
    pytest.param((host, family), id=f"{host.name}-{family}") for host in HOSTS for family in host.families
]


@pytest.fixture(scope="session", params=PARAMS)
def server(request, tmp_path_factory):
    host, family = request.param
    checkout = host.checkout()
    if checkout is None:
        pytest.skip(
            f"{host.env} is not set: the {host.name} tests need a checkout of that WebUI (see conftest.py)"
        )
    try:
        with start_webui(host, checkout, family, tmp_path_factory.mktemp(f"{host.name}-{family}")) as running:
            yield running
    except StartError as err:
        pytest.fail(str(err))
