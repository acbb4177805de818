"""The step-cost benchmark runs each variant and reports finite ratios (no timing is asserted)."""

import math

import torch

from bench import step_cost


def test_every_variant_runs_and_the_report_has_ratios(capsys):
    results = []
    for variant, run in step_cost.VARIANTS.items():
        pipe = step_cost.sd15_pipeline(tiny=True)  # fresh: the naive variant grows the vocabulary
        seconds, setup, peak = run(pipe, 64, 2, 1)
        assert seconds > 0 and math.isfinite(peak)
        results.append(step_cost.Measurement(variant, 64, 2, seconds, setup, peak))
    summary = step_cost.report(results, [results[1]])
    row = summary["rows"][0]
    assert (row["size"], row["batch"]) == (64, 2)
    assert row["time_captinv_over_floor"] > 0 and row["time_naive_over_captinv"] > 0
    assert summary["curve"][0]["batch"] == 2
    assert "| 64 | 2 |" in capsys.readouterr().out


def test_naive_variant_really_trains_the_whole_table():
    pipe = step_cost.sd15_pipeline(tiny=True)
    step_cost.run_naive(pipe, 32, 1, 1)
    table = pipe.text_encoder.get_input_embeddings().weight
    assert table.requires_grad and table.shape[0] == 49409  # placeholder token added, full matrix trainable
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    assert torch.isfinite(table).all()
