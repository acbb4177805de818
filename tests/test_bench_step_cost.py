"""The step-cost benchmark's quick mode, end to end on the tiny pipeline (no timing is asserted)."""

import json
import math

import pytest
import torch

from bench import step_cost
from captinv.perfusion import editing


@pytest.mark.slow
def test_quick_run_reports_every_variant_and_finite_ratios(tmp_path, capsys):
    # 64 px, captinv's smallest: the tiny UNet attends over every latent pixel, slow on a CPU at 128.
    # One thread: two threads on a shared two-core machine spin-wait through thousands of tiny ops.
    out = tmp_path / "step_cost.json"
    step_cost.main(
        ["--quick", "--tiny", "--sizes", "64", "--threads", "1", "--perfusion", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())

    expected = {(v, 64, b) for v in ("floor", "captinv", "naive", "perfusion") for b in (1, 2)}
    assert {(r["variant"], r["size"], r["batch"]) for r in summary["rows"]} == expected
    for row in summary["rows"]:
        assert row["steps_timed"] == 2 and row["seconds_per_step"] > 0 and row["peak_mb"] > 0
        assert f"| {row['size']} | {row['batch']} | {row['variant']} |" in printed
    assert [(r["size"], r["batch"]) for r in summary["ratios"]] == [(64, 1), (64, 2)]
    for row in summary["ratios"]:
        values = [value for key, value in row.items() if "_over_" in key]
        assert len(values) == 7 and all(math.isfinite(v) and v > 0 for v in values)
    assert [p["batch"] for p in summary["curve"]] == [1, 2]
    assert all(p["samples_per_second"] > 0 for p in summary["curve"])
    assert "captinv/floor time" in printed and "samples/s" in printed
    assert "perfusion/captinv at 64 px, batch 2: time" in printed


def test_naive_variant_really_trains_the_whole_table(tmp_path):
    pipe = step_cost.sd15_pipeline(tmp_path, tiny=True)
    before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    step_cost.measure_in_process("naive", pipe, 64, 1, 1)
    table = pipe.text_encoder.get_input_embeddings().weight
    assert table.requires_grad and table.shape[0] == before.shape[0] + 1  # placeholder added, all trainable
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    assert torch.equal(table[:-1], before)  # frozen rows restored after every step
    assert not torch.equal(table[-1], before[pipe.tokenizer.convert_tokens_to_ids("cat</w>")])  # it learned


def test_floor_captinv_and_perfusion_leave_the_model_untouched(tmp_path):
    pipe = step_cost.sd15_pipeline(tmp_path, tiny=True)
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    for variant in ("floor", "captinv", "perfusion"):
        result = step_cost.measure_in_process(variant, pipe, 64, 2, 1)
        assert len(result.seconds) == 1 and math.isfinite(result.peak_mb)
    assert pipe.text_encoder.get_input_embeddings()._forward_hooks == {}
    assert not editing.is_installed(pipe.unet)
    after = pipe.text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
