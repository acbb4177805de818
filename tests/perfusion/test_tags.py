"""The knobs a `<perfusion:...>` tag (or the CLI's --concept) gives one concept."""

from __future__ import annotations

import pytest

from captinv.config import PerfusionOptions
from captinv.errors import ConfigError
from captinv.perfusion.errors import PerfusionError
from captinv.perfusion.tags import DEFAULT_BETA, Knobs, check_gate, parse_knobs, resolve


@pytest.mark.parametrize(
    ("args", "knobs"),
    [
        (["kitty"], Knobs("kitty")),
        (["kitty", "0.65"], Knobs("kitty", 0.65)),
        (["kitty", "0.65", "0.2"], Knobs("kitty", 0.65, 0.2)),
        (["kitty", "0.5", "global"], Knobs("kitty", 0.5, None, "global")),
        (["kitty", "GLOBAL"], Knobs("kitty", lock="global")),
        (["kitty", "", "0.1"], Knobs("kitty", None, 0.1)),
        ([" kitty ", " 0.6 ", " local "], Knobs("kitty", 0.6, None, "local")),
    ],
)
def test_tag_arguments(args, knobs):
    assert parse_knobs(args) == knobs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["kitty", "nan"], r"<perfusion:kitty:nan>: β must be a number from 0 to 1, got nan"),
        (["kitty", "inf"], r"β must be a number from 0 to 1, got inf"),
        (["kitty", "-0.2"], r"β must be a number from 0 to 1, got -0.2"),
        (["kitty", "1.5"], r"β must be a number from 0 to 1"),
        (["kitty", "0.7", "0"], r"τ must be a number from 0.01 to 0.5, got 0.0"),
        (["kitty", "0.7", "nan"], r"τ must be a number"),
        (["kitty", "strong"], r"β must be a number, got 'strong'"),
        (["kitty", "0.7", "0.1", "0.2"], r"an extra '0.2'"),
        (["kitty", "global", "0.5"], r"an extra '0.5'"),
        (["", "0.7"], r"name the concept"),
    ],
)
def test_bad_tag_arguments_get_one_clear_message(args, message):
    with pytest.raises(PerfusionError, match=message):
        parse_knobs(args)


def test_the_options_refuse_what_a_tag_refuses():
    for bad in ({"beta": float("nan")}, {"beta": 1.2}, {"tau": 0.0}, {"tau": float("inf")}):
        with pytest.raises(ConfigError):
            PerfusionOptions(**bad)
    check_gate(PerfusionOptions().beta, PerfusionOptions().tau)


def test_a_lock_without_a_beta_takes_that_locks_default():
    stored = (0.72, 0.15, "local")
    assert resolve(Knobs("kitty"), *stored) == stored
    assert resolve(Knobs("kitty", lock="global"), *stored) == (DEFAULT_BETA["global"], 0.15, "global")
    assert resolve(Knobs("kitty", 0.45, 0.2, "global"), *stored) == (0.45, 0.2, "global")
    assert resolve(Knobs("kitty", lock="local"), 0.55, 0.15, "global") == (
        DEFAULT_BETA["local"],
        0.15,
        "local",
    )
