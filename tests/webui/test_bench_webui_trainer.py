"""`bench.webui_trainer` drives both trainers of one real WebUI (a smoke run on the tiny checkpoint)."""

from __future__ import annotations

import os

import pytest

from bench.webui_trainer import main

WEBUI = os.environ.get("CAPTINV_WEBUI_DIR")


@pytest.mark.skipif(not WEBUI, reason="CAPTINV_WEBUI_DIR is not set: this needs a real WebUI checkout")
def test_both_trainers_run_in_one_server_and_are_reported(tmp_path):
    out = tmp_path / "bench.json"
    result = main(
        ["--webui", WEBUI, "--tiny", "--steps", "1", "3", "--batches", "1", "2", "--json", str(out)]
    )
    assert out.is_file()
    assert [(row["trainer"], row["draws"]) for row in result["rows"]] == [
        ("builtin", 1),
        ("captinv", 1),
        ("captinv", 2),
    ]
    for row in result["rows"]:
        # every call finished (a failed trainer raises) and was timed at both lengths
        assert sorted(int(steps) for steps in row["seconds"]) == [1, 3]
        assert all(seconds > 0 for calls in row["seconds"].values() for seconds in calls)
    assert result["webui_commit"]
