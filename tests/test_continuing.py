"""Continue from this embedding: a second round starts from the stored set, not from the caption."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from captinv.captioning import init_source
from captinv.embedding_io import read_embedding
from captinv.errors import CaptinvError, ConfigError, FileFormatError
from captinv.inversion import check_inputs, invert, prepare
from captinv.latents import build_latent_cache
from captinv.loss import diffusion_loss
from captinv.trainer import Trainer
from tests.helpers import CAPTION, text_config

FIRST = dict(steps=6, auto_stop=False, vectors_per_word=1, train_function_words=False)


@pytest.fixture(scope="module")
def first_set(sd1, chelsea, tmp_path_factory):
    """A trained set whose planning options differ from the defaults (one vector per word, function
    words left plain), so a second round must read them from the file to split its vectors."""
    out = tmp_path_factory.mktemp("first")
    return invert(sd1, [chelsea], CAPTION, text_config(**FIRST), out, base="cat")


def _combined(result):
    return next(path for path in result.files if path.stem == result.combined_name)


def _latents(backend, image):
    return build_latent_cache(
        backend, [image], backend.default_resolution, flip=False, random_crops=0, generator=torch.Generator()
    )


def test_the_second_round_starts_from_the_stored_vectors(sd1, chelsea, first_set, tmp_path):
    """Its first loss is the stored set's loss on the same draws (computed independently, through the
    combined embedding in a prompt), not the caption's; its trained words start at the stored rows."""
    combined = _combined(first_set)
    config = text_config(text=None, init="caption", start_from=str(combined), steps=2)
    text = init_source(config).describe([chelsea])
    assert text == CAPTION
    plan = prepare(sd1, text, "cat-again", config, tmp_path)
    trainer = Trainer(sd1, plan, _latents(sd1, chelsea), config)
    fresh = Trainer(
        sd1,
        prepare(sd1, CAPTION, "cat-fresh", text_config(**FIRST), tmp_path),
        _latents(sd1, chelsea),
        config,
    )

    stored_words = {read_embedding(path).name: read_embedding(path).vectors for path in first_set.files[1:]}
    started = trainer.snapshot()
    assert len(started) == len(stored_words) == len(first_set.word_names)
    for new, old in zip(started, first_set.word_names):
        assert torch.equal(started[new]["emb_params"], stored_words[old]["emb_params"])

    draws = trainer.fixed_draws(8, seed=3)
    with torch.no_grad():
        cond = sd1.conditioning(
            [f"a photo of a {first_set.combined_name}"] * 8,
            {first_set.combined_name: read_embedding(combined).vectors},
        )
        stored_loss = diffusion_loss(sd1, draws.x0, draws.noise, draws.timesteps, cond).item()
    first_loss = trainer.evaluate(draws)
    caption_loss = fresh.evaluate(draws)
    assert first_loss == pytest.approx(stored_loss, rel=1e-5)
    assert abs(caption_loss - stored_loss) > 100 * abs(first_loss - stored_loss)


def test_a_continued_set_records_where_it_came_from(sd1, chelsea, first_set, tmp_path):
    config = text_config(text=None, init="caption", start_from=str(_combined(first_set)), steps=2)
    result = invert(sd1, [chelsea], CAPTION, config, tmp_path, base="cat-again")
    metadata = read_embedding(result.files[0]).metadata
    assert metadata["continued_from"] == "cat-all.safetensors"
    assert metadata["vectors_per_word"] == "1" and metadata["train_function_words"] == "false"
    assert result.word_names == [name.replace("cat-", "cat-again-") for name in first_set.word_names]


@pytest.mark.parametrize(
    "case, error, words",
    [
        ("missing", ConfigError, "not found"),
        ("word file", ConfigError, "one word of a set"),
        ("foreign", FileFormatError, "not made by a captinv caption inversion"),
        ("other caption", ConfigError, "keeps its caption"),
    ],
)
def test_a_file_that_cannot_be_continued_is_refused_before_the_model(first_set, tmp_path, case, error, words):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"emb_params": torch.zeros(2, 32)}, foreign)
    start = {
        "missing": tmp_path / "nothing-all.safetensors",
        "word file": first_set.files[1],
        "foreign": foreign,
        "other caption": _combined(first_set),
    }[case]
    config = text_config(
        text="a dog" if case == "other caption" else None, init="caption", start_from=str(start)
    )
    with pytest.raises(error, match=words):
        check_inputs(init_source(config).describe([]), "again", config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_set_made_for_another_model_family_is_refused(sdxl, chelsea, first_set, tmp_path):
    config = text_config(text=None, init="caption", start_from=str(_combined(first_set)))
    with pytest.raises(CaptinvError, match="another model family"):
        prepare(sdxl, CAPTION, "again", config, tmp_path)


def test_a_set_that_does_not_record_its_planning_takes_it_from_the_options(sd1, tmp_path):
    """Sets written before the planning options were recorded: the run's own options split the
    vectors, and a split that does not fit is refused with what to set."""
    width = sd1.encoders[0].width
    old = tmp_path / "old-all.safetensors"  # "a tabby cat" with two vectors per word, as --vectors-per-word 2
    metadata = {"format": "captinv", "caption": "a tabby cat", "name": "old-all", "steps": "50"}
    save_file({"emb_params": torch.randn(6, width)}, old, metadata=metadata)
    config = text_config(text=None, init="caption", start_from=str(old))
    with pytest.raises(FileFormatError, match="holds 6 vectors but its caption plans to 3"):
        prepare(sd1, "a tabby cat", "again", config, tmp_path / "a")
    right = text_config(text=None, init="caption", start_from=str(old), vectors_per_word=2)
    plan = prepare(sd1, "a tabby cat", "again", right, tmp_path / "b")
    assert [word.init["emb_params"].shape[0] for word in plan.trainable] == [2, 2, 2]
