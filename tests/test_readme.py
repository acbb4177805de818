"""The README's options table and test command are what the code and CI really use."""

import dataclasses
from pathlib import Path

from captinv.config import InvertConfig, PerfusionOptions

ROOT = Path(__file__).resolve().parent.parent


def test_readme_documents_every_option_with_its_default_and_help():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for options in (InvertConfig, PerfusionOptions):
        for spec in dataclasses.fields(options):
            row = f"| `--{spec.name.replace('_', '-')}` | `{spec.default}` | {spec.metadata['help']} |"
            assert row in readme, spec.name


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = "python -m pytest -q"
    assert command in readme and ci.strip().splitlines()[-1] == command
