import pytest

from captinv.config import InvertConfig
from captinv.errors import ConfigError


def test_defaults_follow_the_caption_init_paper():
    config = InvertConfig()
    assert (config.init, config.steps, config.train_function_words) == ("caption", 100, True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"init": "guess"}, "init must be one of"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"init": "text"}, "needs the init text"),
        ({"steps": 5, "warmup_steps": 5}, "warmup_steps"),
        ({"colour": "red"}, "Unknown option"),
    ],
)
def test_bad_options_are_refused_with_a_message(values, message):
    with pytest.raises(ConfigError, match=message):
        InvertConfig.from_mapping(values)
