"""The layers stay apart: only captinv/hosts/ imports a WebUI's own modules, and the method core
imports neither a WebUI nor the UI libraries."""

import ast
from pathlib import Path

import captinv

HOST_MODULES = {"modules", "modules_forge", "backend", "ldm_patched", "launch"}
UI_MODULES = {"gradio", "fastapi", "pydantic", "starlette"}
ROOT = Path(captinv.__file__).parent


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _offenders(forbidden: set[str], allowed_in: set[str]) -> dict[str, list[str]]:
    return {
        str(path.relative_to(ROOT)): sorted(_imports(path) & forbidden)
        for path in ROOT.rglob("*.py")
        if path.relative_to(ROOT).parts[0] not in allowed_in and _imports(path) & forbidden
    }


def test_only_the_host_layer_imports_a_webui():
    assert _offenders(HOST_MODULES, {"hosts"}) == {}


def test_the_core_imports_no_ui_library():
    assert _offenders(UI_MODULES, {"hosts", "webui"}) == {}


def test_the_host_seam_itself_imports_no_webui():
    assert _imports(ROOT / "hosts" / "base.py") & (HOST_MODULES | UI_MODULES) == set()


def test_the_check_sees_a_violation(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("from modules import shared\nimport gradio as gr\nimport backend.loader\n")
    assert _imports(sample) & (HOST_MODULES | UI_MODULES) == {"modules", "gradio", "backend"}
