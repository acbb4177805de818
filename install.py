"""Run by the WebUI (launch_utils.run_extension_installer) with the WebUI's Python.

Installs only the runtime requirements from pyproject.toml that are missing,
with every installed package pinned at its current version, so the WebUI's
own pins (torch, transformers, gradio, safetensors, ...) never move.
"""

import sys
import tempfile
from pathlib import Path

import launch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from captinv.webui.requirements import missing, pin_installed, runtime_requirements  # noqa: E402

for requirement in missing(runtime_requirements(ROOT / "pyproject.toml"), launch.is_installed):
    with tempfile.TemporaryDirectory() as folder:
        constraints = pin_installed(Path(folder) / "constraints.txt")
        launch.run_pip(f'install "{requirement}" -c "{constraints}"', f"captinv requirement: {requirement}")
