"""A whole Perfusion run through the inversion trainer, on tiny real SD1 and SDXL pipelines."""

from __future__ import annotations

import pytest
import torch

from captinv.config import InvertConfig, PerfusionOptions
from captinv.errors import Interrupted, NameTakenError
from captinv.latents import build_latent_cache
from captinv.perfusion import editing
from captinv.perfusion.concept import PerfusionConcept
from captinv.perfusion.covariance import CovarianceCache
from captinv.perfusion.layers import cross_attention_layers
from captinv.perfusion.training import (
    PerfusionTrainer,
    concept_position,
    default_superclass,
    plan_concept,
    text_covariance,
    train_concept,
)
from captinv.trainer import Callbacks
from tests.helpers import weights

TEXT = "a tabby cat on a wooden table"
OPTIONS = PerfusionOptions(covariance_prompts=64)


def _config(**overrides) -> InvertConfig:
    values = {"init": "text", "text": TEXT, "steps": 3, "learning_rate": 0.05, "batch_size": 2}
    return InvertConfig(**(values | overrides))


@pytest.fixture(scope="module")
def covariance(sd1, tmp_path_factory):
    return text_covariance(sd1, OPTIONS, CovarianceCache(tmp_path_factory.mktemp("cov")))


@pytest.mark.parametrize(
    ("text", "superclass"),
    [
        ("a tabby cat on a sofa", "cat"),
        ("a black and white dog sitting in the grass", "dog"),
        ("there is a teapot on a table", "teapot"),
        ("kitty", "kitty"),
    ],
)
def test_the_default_superclass_is_the_first_phrase_head(text, superclass):
    assert default_superclass(text) == superclass


def test_the_concept_replaces_the_superclass_and_starts_from_its_rows(sd1):
    plan = plan_concept(sd1, TEXT, "kitty", "cat")
    assert plan.sentence() == "a tabby kitty on a wooden table"
    (concept,) = plan.trainable
    assert concept.vector_count == 1
    assert torch.equal(concept.init["emb_params"][0], sd1.token_rows(sd1.tokenize("cat"))["emb_params"][0])
    assert plan_concept(sd1, TEXT, "kitty", "dog").sentence() == "kitty"


def test_the_probed_position_is_where_the_tokenizer_puts_the_concept(sd1):
    rows = {"emb_params": torch.randn(1, sd1.encoders[0].width)}
    prompt = "a photo of a tabby kitty on a table"
    expected = 1 + sd1.count_tokens("a photo of a tabby")  # BOS first
    assert concept_position(sd1, prompt, "kitty", rows) == expected


def test_the_covariance_is_cached_per_text_path(sd1, tmp_path):
    cache = CovarianceCache(tmp_path)
    first = text_covariance(sd1, OPTIONS, cache)
    (path,) = tmp_path.iterdir()
    assert path.name.startswith("sd1-") and first.width == sd1.encoders[0].width
    again = text_covariance(sd1, OPTIONS, cache)
    assert torch.equal(first.matrix, again.matrix)


@pytest.mark.parametrize("backend_name", ["sd1", "sdxl"])
def test_a_run_lowers_the_loss_writes_a_concept_and_leaves_the_model_stock(
    request, backend_name, chelsea, tmp_path
):
    backend = request.getfixturevalue(backend_name)
    covariance = text_covariance(backend, OPTIONS, None)
    before = weights(backend)
    config = _config(steps=25, batch_size=4)
    plan = plan_concept(backend, TEXT, "kitty", "cat")
    latents = build_latent_cache(
        backend, [chelsea], backend.default_resolution, flip=True, random_crops=0, generator=torch.Generator()
    )
    trainer = PerfusionTrainer(backend, plan, latents, config, OPTIONS, covariance.factor())
    draws = trainer.fixed_draws(8, seed=7)
    with trainer.session():
        loss_before = trainer.evaluate(draws)
    initial_v = [v.detach().clone() for v in trainer.edit.v_targets]

    result = trainer.run()

    with trainer.session():
        assert trainer.evaluate(draws) < loss_before
    assert all(not torch.equal(a, b) for a, b in zip(initial_v, trainer.edit.v_targets))
    assert not editing.is_installed(backend.denoiser())
    after = weights(backend)
    assert all(torch.equal(before[k], after[k]) for k in before), "a model weight changed"
    concept = trainer.concept(result.embeddings["kitty"], {})
    assert concept.superclass == "cat" and len(concept.v_targets) == len(
        cross_attention_layers(backend.denoiser())
    )
    assert concept.k_targets == {}  # keys stay locked to W_K i_super


def test_train_concept_writes_a_file_that_loads_and_refuses_a_taken_name(sd1, chelsea, covariance, tmp_path):
    config = _config(steps=2)
    result = train_concept(
        sd1, [chelsea], TEXT, config, OPTIONS, tmp_path, name="kitty", covariance=covariance
    )
    loaded = PerfusionConcept.load(result.path)
    assert result.path == tmp_path / "kitty.safetensors" and loaded.name == "kitty"
    assert loaded.superclass == "cat" and (loaded.beta, loaded.tau) == (OPTIONS.beta, OPTIONS.tau)
    assert (
        result.size.total == loaded.size().total and result.path.stat().st_size < 2 * result.size.total + 4096
    )
    assert result.sentence == "a tabby kitty on a wooden table" and len(result.losses) == 2
    with pytest.raises(NameTakenError):
        train_concept(sd1, [chelsea], TEXT, config, OPTIONS, tmp_path, name="kitty", covariance=covariance)


def test_an_interrupted_run_writes_nothing_and_unwraps_the_unet(sd1, chelsea, covariance, tmp_path):
    calls = iter(range(100))
    with pytest.raises(Interrupted):
        train_concept(
            sd1,
            [chelsea],
            TEXT,
            _config(steps=5),
            OPTIONS,
            tmp_path,
            name="kitty",
            covariance=covariance,
            callbacks=Callbacks(should_stop=lambda: next(calls) >= 2),
        )
    assert list(tmp_path.iterdir()) == []
    assert not editing.is_installed(sd1.denoiser())
