"""A concept knows its text path; the covariance is cached per text path and corpus."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from captinv.backends.base import ModelBackend
from captinv.config import PerfusionOptions
from captinv.perfusion import textpath
from captinv.perfusion.corpus import build_corpus
from captinv.perfusion.covariance import CovarianceCache
from captinv.perfusion.textpath import TextFingerprint, fingerprint, text_covariance, text_path_warning

PROMPTS = ["a photo of a cat", "an oil painting of a red house by the sea at sunset, dramatic light", ""]


@pytest.mark.parametrize("backend_name", ["sd1", "sdxl"])
def test_own_positions_are_those_of_the_full_conditioning(request, backend_name):
    """Encoding only up to the batch's last EOS changes no row the covariance counts."""
    backend = request.getfixturevalue(backend_name)
    short, mask = backend.text_encodings(PROMPTS, padding=False)
    with torch.no_grad():
        full = backend.context(backend.conditioning(PROMPTS, {}))
    lengths = [backend.count_tokens(p) + 2 for p in PROMPTS]
    assert short.shape[1] == max(lengths) < full.shape[1]
    assert mask.sum(1).tolist() == lengths
    torch.testing.assert_close(short[mask], full[:, : short.shape[1]][mask], rtol=1e-5, atol=1e-5)
    padded, padded_mask = backend.text_encodings(PROMPTS, padding=True)
    torch.testing.assert_close(padded, full, rtol=1e-5, atol=1e-5)
    default, default_mask = ModelBackend.text_encodings(backend, PROMPTS)  # the host-agnostic default
    assert torch.equal(default, full) and torch.equal(default_mask, padded_mask)
    assert torch.equal(default_mask[:, : mask.shape[1]], mask) and not default_mask[:, mask.shape[1] :].any()


@pytest.fixture
def tweaked_sd1(sd1):
    """The same model with the text encoder's final norm scaled: another fine-tune or clip skip."""
    norm = sd1.pipe.text_encoder.text_model.final_layer_norm
    original = norm.weight.detach().clone()

    def tweak(scale: float) -> None:
        with torch.no_grad():
            norm.weight.copy_(original * scale)

    yield tweak
    with torch.no_grad():
        norm.weight.copy_(original)


def test_a_fingerprint_tells_another_text_path_from_numerical_noise(sd1, tweaked_sd1):
    stored = fingerprint(sd1)
    assert stored == fingerprint(sd1) and stored.key.startswith("sd1-32-")
    metadata = stored.to_metadata()
    assert len("".join(metadata.values())) < 2000
    assert TextFingerprint.from_metadata(metadata).difference(stored) < 1e-4
    assert text_path_warning(metadata, sd1, "kitty") is None
    tweaked_sd1(1.0 + 1e-4)  # below fp16's resolution: the same path
    assert text_path_warning(metadata, sd1, "kitty") is None
    tweaked_sd1(1.3)
    warning = text_path_warning(metadata, sd1, "kitty")
    assert warning and "'kitty' was trained with another text path" in warning and stored.key in warning
    assert text_path_warning({}, sd1, "old") is None  # files from before fingerprints: nothing to compare


def test_the_covariance_is_keyed_by_text_path_and_corpus_not_by_prompt_count(sd1, tmp_path, monkeypatch):
    cache = CovarianceCache(tmp_path / "cache")
    first = text_covariance(sd1, PerfusionOptions(covariance_prompts=64), cache)
    (path,) = (tmp_path / "cache").iterdir()
    assert path.stem == f"{fingerprint(sd1).key}-{build_corpus().corpus_id}" == first.source
    assert first.prompts == 64 and not first.converged

    calls = []
    monkeypatch.setattr(textpath, "estimate_covariance", lambda *a, **k: calls.append(a))
    again = text_covariance(sd1, PerfusionOptions(covariance_prompts=32), cache)  # fewer: cached is fine
    assert torch.equal(again.matrix, first.matrix) and calls == []
    monkeypatch.undo()

    more = text_covariance(sd1, PerfusionOptions(covariance_prompts=96), cache)  # cached stopped short
    assert more.prompts == 96 and len(list((tmp_path / "cache").iterdir())) == 1
    captions = tmp_path / "captions.txt"
    captions.write_text("a purple triangle\na small circle on the left\n")
    own = text_covariance(
        sd1, PerfusionOptions(covariance_prompts=64, covariance_captions=str(captions)), cache
    )
    assert own.corpus_id != first.corpus_id and len(list((tmp_path / "cache").iterdir())) == 2


def test_a_converged_estimate_is_reused_whatever_the_limit(sd1, tmp_path):
    cache = CovarianceCache(tmp_path)
    covariance = text_covariance(sd1, PerfusionOptions(covariance_prompts=64), cache)
    cache.save(covariance.source, dataclasses.replace(covariance, converged=True))
    assert text_covariance(sd1, PerfusionOptions(covariance_prompts=5000), cache).prompts == 64
