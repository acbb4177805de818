import math

import pytest

from captinv.config import GenerateOptions, InvertConfig, PerfusionOptions
from captinv.errors import ConfigError, InvalidNameError, cli_flag, tab_label


def test_defaults_follow_the_caption_init_paper():
    config = InvertConfig()
    assert (config.init, config.steps, config.train_function_words) == ("caption", 100, True)


@pytest.mark.parametrize(
    ("options", "values", "message"),
    [
        (InvertConfig, {"init": "guess"}, "init must be one of caption, classify, text; got 'guess'"),
        (InvertConfig, {"steps": 0}, "steps must be a whole number of at least 1; got 0"),
        (InvertConfig, {"steps": 2.5}, "steps must be a whole number of at least 1; got 2.5"),
        (InvertConfig, {"steps": "5"}, "steps must be a whole number"),
        (InvertConfig, {"init": "text"}, "needs the init text"),
        (
            InvertConfig,
            {"steps": 5, "warmup_steps": 5},
            r"warmup_steps \(5\) must be smaller than steps \(5\)",
        ),
        (InvertConfig, {"colour": "red"}, "Unknown option"),
        (InvertConfig, {"learning_rate": math.nan}, "learning_rate must be a finite number above 0; got nan"),
        (InvertConfig, {"learning_rate": math.inf}, "learning_rate must be a finite number above 0; got inf"),
        (InvertConfig, {"learning_rate": 0}, "learning_rate must be a finite number above 0; got 0"),
        (InvertConfig, {"max_grad_norm": 0}, "max_grad_norm must be a finite number above 0, or none for no"),
        (InvertConfig, {"resolution": 100}, "resolution must be a multiple of 64 from 64 to 4096"),
        (InvertConfig, {"batch_size": 0}, "batch_size must be a whole number of at least 1"),
        (InvertConfig, {"init_l2": -1.0}, "init_l2 must be a finite number of at least 0"),
        (InvertConfig, {"seed": -1}, "seed must be a whole number from 0 to 4294967295"),
        (InvertConfig, {"flip": "yes"}, "flip must be one of auto, on, off; got 'yes'"),
        (InvertConfig, {"text": "  "}, "text is empty; type some text or leave it out"),
        (InvertConfig, {"captioner": ""}, "captioner is empty"),
        (PerfusionOptions, {"beta": math.nan}, "beta must be a finite number from 0.0 to 1.0; got nan"),
        (PerfusionOptions, {"tau": 0.0}, "tau must be a finite number from 0.01 to 0.5"),
        (
            PerfusionOptions,
            {"value_learning_rate": -1.0},
            "value_learning_rate must be a finite number above 0",
        ),
        (PerfusionOptions, {"superclass": "tabby cat"}, "superclass must be one word"),
        (
            PerfusionOptions,
            {"covariance_prompts": 10**7},
            "covariance_prompts must be a whole number from 16",
        ),
        (GenerateOptions, {"guidance": math.inf}, "guidance must be a finite number of at least 0"),
    ],
)
def test_bad_options_are_refused_with_a_message(options, values, message):
    with pytest.raises(ConfigError, match=message):
        options.from_mapping(values)


def test_no_clipping_is_none_and_whole_floats_are_whole_numbers():
    config = InvertConfig(max_grad_norm=None, steps=50.0)
    assert config.max_grad_norm is None and config.steps == 50 and isinstance(config.steps, int)


def test_an_option_error_names_the_option_in_each_front_ends_words():
    with pytest.raises(ConfigError) as caught:
        InvertConfig(learning_rate=math.nan)
    err = caught.value
    assert err.field == "learning_rate"
    assert err.render(cli_flag).startswith("--learning-rate must be")
    assert err.render(tab_label).startswith("Learning rate must be")
    assert str(err).startswith("learning_rate must be")
    with pytest.raises(ConfigError) as caught:
        InvertConfig(init="text")
    assert caught.value.render(tab_label) == (
        "Init words from text needs the init text in Caption (for classic textual inversion use '*')."
    )


def test_a_name_without_letters_is_refused_by_the_config():
    with pytest.raises(InvalidNameError, match="no letters or digits") as caught:
        InvertConfig(name="!!!")
    assert caught.value.render(cli_flag).endswith("give a name such as 'my-cat' in --name.")
