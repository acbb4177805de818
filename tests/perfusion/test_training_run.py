"""A whole Perfusion run through the inversion trainer, on tiny real SD1 and SDXL pipelines."""

from __future__ import annotations

import json

import pytest
import torch

from captinv.config import InvertConfig, PerfusionOptions
from captinv.errors import Interrupted, NameTakenError
from captinv.latents import build_latent_cache
from captinv.perfusion import editing
from captinv.perfusion.concept import PerfusionConcept
from captinv.perfusion.covariance import CovarianceCache
from captinv.perfusion.errors import PerfusionError
from captinv.perfusion.layers import cross_attention_layers
from captinv.perfusion.selectivity import GateSelectivity
from captinv.perfusion.textpath import TextFingerprint, fingerprint, text_covariance
from captinv.perfusion.training import (
    PerfusionTrainer,
    concept_position,
    default_superclass,
    plan_concept,
    probe_nudge,
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


def test_a_non_finite_encoding_is_named_as_such_not_as_a_missing_concept(sd1):
    rows = {"emb_params": torch.full((1, sd1.encoders[0].width), float("inf"))}
    with pytest.raises(PerfusionError, match="NaN or infinite values for 'a photo of a kitty'"):
        concept_position(sd1, "a photo of a kitty", "kitty", rows)


def test_the_probe_moves_the_concept_encoding_through_the_layer_norms(sd1):
    """The text encoder's layer norms remove a shift of every component by one amount (the old
    probe's nudge: on A1111's SD2 path it moved nothing at all); the probe's nudge must move the
    concept's encoding by far more than rounding."""
    rows = sd1.token_rows(sd1.tokenize("cat"))
    prompt, position = "a photo of a kitty", 1 + sd1.count_tokens("a photo of a")

    def encoding(vectors):
        with torch.no_grad():
            return sd1.context(sd1.conditioning([prompt], {"kitty": vectors}))[0, position].float()

    base = encoding(rows)
    uniform = (encoding({k: v + 1e-2 for k, v in rows.items()}) - base).abs().max()
    probed = (encoding({k: v + probe_nudge(v) for k, v in rows.items()}) - base).abs().max()
    assert probed > 1e-4 and probed > 100 * uniform, (probed, uniform)


def test_the_covariance_is_cached_per_text_path(sd1, tmp_path):
    cache = CovarianceCache(tmp_path)
    first = text_covariance(sd1, OPTIONS, cache)
    (path,) = tmp_path.iterdir()
    assert path.name.startswith("sd1-") and first.width == sd1.encoders[0].width
    again = text_covariance(sd1, OPTIONS, cache)
    assert torch.equal(first.matrix, again.matrix)


def _trainer(backend, chelsea, covariance, plan=None, **overrides) -> PerfusionTrainer:
    config = _config(**overrides)
    plan = plan or plan_concept(backend, TEXT, "kitty", "cat")
    latents = build_latent_cache(
        backend,
        [chelsea],
        backend.default_resolution,
        flip=False,
        random_crops=0,
        generator=torch.Generator(),
    )
    return PerfusionTrainer(backend, plan, latents, config, OPTIONS, covariance.factor())


@torch.no_grad()
def _encoding(backend, prompt: str, position: int, embeddings=None) -> torch.Tensor:
    return backend.context(backend.conditioning([prompt], embeddings or {}))[0, position].float()


def test_the_run_matches_an_independent_recomputation_of_i_super_the_ema_and_c_inverse_i_star(
    sd1, chelsea, covariance
):
    """One template, so every draw's prompt is the sentence: i_super is the encoding of 'cat' in the
    plain sentence, i* starts at the concept's encoding and follows i* <- 0.99 i* + 0.01 e_k with e_k
    from the embedding before step k; the file's C⁻¹i* solves the shrunk covariance."""
    trainer = _trainer(sd1, chelsea, covariance, steps=4, templates="none")
    sentence, plain = "a tabby kitty on a wooden table", TEXT
    position = 1 + sd1.count_tokens("a tabby")  # BOS first; counted by the tokenizer, not probed
    embeddings = [trainer.plan.trainable[0].init["emb_params"]]
    result = trainer.run(
        Callbacks(preview=lambda step, e: embeddings.append(e["kitty"]["emb_params"]), preview_every=1)
    )
    assert result.steps == 4 and len(embeddings) == 5
    torch.testing.assert_close(trainer.i_super, _encoding(sd1, plain, position), rtol=0, atol=1e-6)
    expected = _encoding(sd1, sentence, position, {"kitty": {"emb_params": embeddings[0]}})
    for embedding in embeddings[1:-1]:
        expected = 0.99 * expected + 0.01 * _encoding(
            sd1, sentence, position, {"kitty": {"emb_params": embedding}}
        )
    torch.testing.assert_close(trainer.i_star, expected, rtol=0, atol=1e-6)
    concept = trainer.concept(result.embeddings["kitty"], {})
    matrix = covariance.matrix
    shrunk = matrix + 1e-4 * torch.trace(matrix) / matrix.shape[0] * torch.eye(
        matrix.shape[0], dtype=torch.float64
    )
    torch.testing.assert_close(
        concept.c_inv_i_star.double(), torch.linalg.solve(shrunk, expected.double()), rtol=1e-5, atol=1e-6
    )


def test_a_rolled_back_step_rolls_back_the_running_i_star(sd1, chelsea, covariance, monkeypatch):
    trainer = _trainer(sd1, chelsea, covariance, steps=3)
    with trainer.session():
        assert trainer.step() is not None
        good = trainer.i_star.clone()
        monkeypatch.setattr("captinv.trainer.diffusion_loss", lambda *a, **k: torch.tensor(float("nan")))
        assert trainer.step() is None  # the NaN guard rejected it, after the step's encodings entered i*
    assert trainer.rollbacks == 1 and torch.equal(trainer.i_star, good)


def test_gradient_clipping_covers_the_value_targets(sd1, chelsea, covariance):
    norms = {}
    for clip in (None, 1e-4):
        trainer = _trainer(sd1, chelsea, covariance, steps=1, max_grad_norm=clip)
        with trainer.session():
            trainer.step()
        norms[clip] = (
            float(torch.stack([p.grad.norm() for p in trainer.edit.v_targets]).norm()),
            float(trainer.params["emb_params"].grad.norm()),
        )
    assert norms[None][0] > 1e-3 and norms[None][1] > 1e-3  # unclipped, both are well above the limit
    assert norms[1e-4][0] <= 1e-4 * 1.0001 and norms[1e-4][1] <= 1e-4 * 1.0001


def test_a_multi_token_superclass_locks_and_starts_from_the_same_token(sd1, chelsea, covariance):
    tokens = sd1.tokenize("axolotl")
    assert len(tokens) > 1
    text = "a photo of an axolotl on a rock"
    plan = plan_concept(sd1, text, "kitty", "axolotl")
    last_row = sd1.token_rows(tokens[-1:])["emb_params"]
    assert torch.equal(plan.trainable[0].init["emb_params"], last_row)
    trainer = _trainer(sd1, chelsea, covariance, plan=plan, templates="none", text=text)
    last = sd1.count_tokens("a photo of an axolotl")  # the word's last token (BOS is position 0)
    torch.testing.assert_close(trainer.i_super, _encoding(sd1, text, last), rtol=0, atol=1e-6)


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
    meta = loaded.metadata
    assert meta["covariance"] == covariance.source and loaded.lock == "local"
    assert TextFingerprint.from_metadata(meta) == TextFingerprint.from_metadata(
        fingerprint(sd1).to_metadata()
    )
    assert GateSelectivity(**json.loads(meta["gate_selectivity"])).to_dict() == result.selectivity.to_dict()
    assert result.to_dict()["gate_selectivity"] == result.selectivity.to_dict()
    assert 0 <= result.selectivity.off_concept_open <= 1 and result.selectivity.prompts >= 20
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
