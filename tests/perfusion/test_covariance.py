"""The streaming text-encoding covariance, its Cholesky factor, cache and default corpus."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from captinv.clip_vocab import clip_tokenizer
from captinv.errors import Interrupted
from captinv.perfusion.covariance import (
    Covariance,
    CovarianceCache,
    corpus_id,
    covariance_solve,
    default_corpus,
    estimate_covariance,
)
from captinv.perfusion.errors import CovarianceError

PROMPTS = [f"prompt {i}" for i in range(20)]


def _encodings(rank: int | None = None) -> torch.Tensor:
    draw = torch.Generator().manual_seed(0)
    if rank is None:
        return torch.randn(20, 7, 6, generator=draw)
    return torch.randn(20, 7, rank, generator=draw) @ torch.randn(rank, 6, generator=draw)


def _encoder(encodings: torch.Tensor):
    return lambda prompts: encodings[[PROMPTS.index(p) for p in prompts]]


def test_streaming_equals_the_batch_estimate():
    encodings = _encodings()
    seen = []
    streamed = estimate_covariance(
        _encoder(encodings), PROMPTS, batch_size=3, progress=lambda *a: seen.append(a)
    )
    rows = encodings.double().reshape(-1, 6)
    torch.testing.assert_close(streamed.matrix, rows.T @ rows / rows.shape[0], rtol=1e-13, atol=0)
    assert streamed.matrix.dtype == torch.float64 and streamed.count == 140
    assert streamed.corpus_id == corpus_id(PROMPTS) != corpus_id(PROMPTS[:-1])
    assert seen[0] == (3, 20) and seen[-1] == (20, 20) and len(seen) == 7


def test_a_mask_leaves_positions_out():
    encodings = _encodings()
    encodings[:, 5:] = 1e6  # positions the mask removes
    keep = torch.tensor([True] * 5 + [False] * 2)
    masked = estimate_covariance(_encoder(encodings), PROMPTS, batch_size=6, mask=keep)
    rows = encodings[:, :5].double().reshape(-1, 6)
    assert masked.count == 100
    torch.testing.assert_close(masked.matrix, rows.T @ rows / 100, rtol=1e-13, atol=0)


def test_every_position_of_the_real_conditioning_path_is_counted(tmp_path):
    """The default is what the UNet attends to: all 77 positions, BOS, EOS and padding included."""
    tokenizer = clip_tokenizer(tmp_path / "tokenizer")
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1
    )
    encoder = CLIPTextModel(config).eval()

    def encode(prompts: list[str]) -> torch.Tensor:
        ids = tokenizer(
            prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        return encoder(ids).last_hidden_state

    prompts = default_corpus(12, seed=3)
    covariance = estimate_covariance(encode, prompts, batch_size=5)
    assert covariance.count == 12 * 77
    rows = encode(prompts).detach().double().reshape(-1, 16)
    torch.testing.assert_close(covariance.matrix, rows.T @ rows / rows.shape[0], rtol=1e-6, atol=0)


def test_shrinkage_makes_a_rank_deficient_estimate_factorable():
    covariance = estimate_covariance(_encoder(_encodings(rank=2)), PROMPTS)
    assert int(torch.linalg.matrix_rank(covariance.matrix)) == 2
    with pytest.raises(CovarianceError, match="not positive definite"):
        covariance.factor(shrinkage=0.0)
    factor = covariance.factor()
    ridge = 1e-4 * torch.trace(covariance.matrix) / 6
    shrunk = covariance.matrix + ridge * torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(factor @ factor.T, shrunk, rtol=1e-12, atol=1e-12)
    vectors = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(covariance_solve(factor, vectors), torch.linalg.solve(shrunk, vectors.T).T)
    with pytest.raises(CovarianceError, match="trace"):
        Covariance(torch.zeros(6, 6, dtype=torch.float64), 1, "empty").factor()


def test_bad_input_and_stopping():
    with pytest.raises(CovarianceError, match="empty"):
        estimate_covariance(_encoder(_encodings()), [])
    with pytest.raises(CovarianceError, match=r"\[batch, tokens, 6\]"):
        estimate_covariance(lambda prompts: torch.zeros(len(prompts), 6), PROMPTS)
    batches = []
    with pytest.raises(Interrupted):
        estimate_covariance(_encoder(_encodings()), PROMPTS, batch_size=4, should_stop=lambda: len(batches) == 2,
                            progress=lambda *a: batches.append(a))  # fmt: skip
    assert len(batches) == 2


def test_cache_round_trip_by_id(tmp_path):
    cache = CovarianceCache(tmp_path / "covariance")
    assert cache.load("sd1-abc-cs1") is None
    covariance = estimate_covariance(_encoder(_encodings()), PROMPTS)
    path = cache.save("sd1-abc-cs1", covariance)
    loaded = cache.load("sd1-abc-cs1")
    assert torch.equal(loaded.matrix, covariance.matrix)
    assert (loaded.count, loaded.corpus_id) == (covariance.count, covariance.corpus_id)
    shutil.copy(path, cache.path("sdxl-def-cs2"))
    with pytest.raises(CovarianceError, match="is not the covariance"):
        cache.load("sdxl-def-cs2")
    with pytest.raises(CovarianceError, match="cache id"):
        cache.path("../escape")


def test_default_corpus_is_distinct_varied_and_reproducible():
    corpus = default_corpus(20_000)
    assert len(set(corpus)) == 20_000
    assert corpus == default_corpus(20_000) and corpus[:100] != default_corpus(100, seed=1)
    lengths = sorted(len(p.split()) for p in corpus)
    assert lengths[0] <= 2 and lengths[-1] >= 15
