"""The core must not import the WebUI or gradio: only captinv/webui/ may."""

import ast
from pathlib import Path

import captinv

HOST_MODULES = {"modules", "launch", "gradio"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_core_never_imports_the_webui():
    root = Path(captinv.__file__).parent
    offenders = {
        str(path.relative_to(root)): sorted(_imports(path) & HOST_MODULES)
        for path in root.rglob("*.py")
        if "webui" not in path.relative_to(root).parts and _imports(path) & HOST_MODULES
    }
    assert offenders == {}


def test_the_check_sees_a_violation(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("from modules import shared\nimport gradio as gr\n")
    assert _imports(sample) & HOST_MODULES == {"modules", "gradio"}
