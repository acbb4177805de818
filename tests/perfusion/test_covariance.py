"""The streaming text-encoding covariance: its estimate, stopping rule, Cholesky factor and cache."""

from __future__ import annotations

import shutil

import pytest
import torch

from captinv.errors import Interrupted
from captinv.perfusion.corpus import Corpus
from captinv.perfusion.covariance import (
    Covariance,
    CovarianceCache,
    covariance_solve,
    estimate_covariance,
)
from captinv.perfusion.errors import CovarianceError

PROMPTS = [f"prompt {i}" for i in range(20)]
CORPUS = Corpus.of(PROMPTS)


def _encodings(rank: int | None = None) -> torch.Tensor:
    draw = torch.Generator().manual_seed(0)
    if rank is None:
        return torch.randn(20, 7, 6, generator=draw)
    return torch.nn.functional.pad(torch.randn(20, 7, rank, generator=draw), (0, 6 - rank))  # exact zeros


def _encoder(encodings: torch.Tensor, mask: torch.Tensor | None = None):
    def encode(prompts, padding):
        index = [PROMPTS.index(p) for p in prompts]
        return encodings[index], None if mask is None else mask[index]

    return encode


def test_streaming_equals_the_batch_estimate_in_float64():
    encodings = _encodings()
    seen = []
    streamed = estimate_covariance(
        _encoder(encodings), CORPUS, batch_size=3, padding_every=None, progress=seen.append
    )
    rows = encodings.double().reshape(-1, 6)
    torch.testing.assert_close(streamed.matrix, rows.T @ rows / rows.shape[0], rtol=1e-13, atol=0)
    assert streamed.matrix.dtype == torch.float64 and streamed.matrix.device.type == "cpu"
    assert (streamed.count, streamed.prompts, streamed.corpus_id) == (140, 20, CORPUS.corpus_id)
    assert CORPUS.corpus_id != Corpus.of(PROMPTS[:-1]).corpus_id
    assert [p.prompts for p in seen] == [3, 6, 9, 12, 15, 18, 20, 20] and seen[-1].expected == 20
    assert all(p.eta >= 0 and p.elapsed >= 0 for p in seen)


def test_padding_counts_for_every_kth_prompt_with_k_times_the_weight():
    """Each prompt's own rows count once; the padding rows of every 4th prompt (corpus order,
    whatever its length) count 4 times, an unbiased stand-in for every prompt's padding."""
    encodings = _encodings()
    own = torch.tensor([True] * 5 + [False] * 2).expand(20, 7)
    asked = {}

    def encode(prompts, padding):
        asked.update(dict.fromkeys(prompts, padding))
        index = [PROMPTS.index(p) for p in prompts]
        return encodings[index], own[index]

    estimated = estimate_covariance(encode, CORPUS, batch_size=3, padding_every=4)
    assert [p for p, padded in asked.items() if padded] == PROMPTS[::4] and len(asked) == 20
    rows = encodings[:, :5].double().reshape(-1, 6)
    padding = encodings[::4, 5:].double().reshape(-1, 6)
    expected = (rows.T @ rows + 4 * padding.T @ padding) / (100 + 4 * 10)
    assert estimated.count == 140
    torch.testing.assert_close(estimated.matrix, expected, rtol=1e-13, atol=0)
    without = estimate_covariance(encode, CORPUS, batch_size=6, padding_every=None)
    assert without.count == 100 and not any(asked.values())
    torch.testing.assert_close(without.matrix, rows.T @ rows / 100, rtol=1e-13, atol=0)


def _gaussian_encoder(width: int, tokens: int = 12):
    """Encodings drawn from one fixed anisotropic distribution: the estimate converges to its C."""
    draw = torch.Generator().manual_seed(5)
    mixing = torch.randn(width, width, generator=draw) * torch.logspace(0, -1.5, width)

    def encode(prompts, padding):
        seed = sum(map(ord, prompts[0]))
        z = torch.randn(len(prompts), tokens, width, generator=torch.Generator().manual_seed(seed))
        return z @ mixing.T, None

    return encode


def test_the_estimate_stops_once_more_prompts_no_longer_move_the_gate_inputs():
    corpus = Corpus.of([f"p{i}" for i in range(20_000)])
    seen = []
    covariance = estimate_covariance(
        _gaussian_encoder(16), corpus, batch_size=32, window=128, tolerance=0.01, progress=seen.append
    )
    assert covariance.converged and 256 <= covariance.prompts < 20_000
    assert seen[-1].prompts == seen[-1].expected == covariance.prompts and seen[-1].change <= 0.01
    assert seen[-2].change > 0 and seen[-2].expected < 20_000  # the forecast came down from the limit
    forced = estimate_covariance(
        _gaussian_encoder(16), corpus, batch_size=32, window=128, tolerance=0.0, max_prompts=1024
    )
    assert not forced.converged and forced.prompts == 1024


def test_probes_are_not_one_row_that_repeats_every_77_positions():
    """Full-length batches hold the same BOS row every 77 rows: probes at a fixed stride were all
    that one row, whose gate input never moves, and the estimate 'converged' at its first check."""

    def encode(prompts, padding):
        rows = torch.randn(len(prompts), 77, 16, generator=torch.Generator().manual_seed(int(prompts[0][1:])))
        rows[:, 0] = 1.0
        return rows, None

    covariance = estimate_covariance(encode, Corpus.of([f"p{i}" for i in range(2048)]), tolerance=0.0)
    assert not covariance.converged and covariance.prompts == 2048


def test_shrinkage_makes_a_rank_deficient_estimate_factorable():
    covariance = estimate_covariance(_encoder(_encodings(rank=2)), CORPUS)
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
        estimate_covariance(_encoder(_encodings()), Corpus.of([]))
    with pytest.raises(CovarianceError, match=r"\[batch, tokens, 6\]"):
        estimate_covariance(lambda prompts, padding: (torch.zeros(len(prompts), 6), None), CORPUS)
    batches = []
    with pytest.raises(Interrupted):
        estimate_covariance(_encoder(_encodings()), CORPUS, batch_size=4, should_stop=lambda: len(batches) == 2,
                            progress=batches.append)  # fmt: skip
    assert len(batches) == 2


def test_cache_round_trip_by_id_and_corpus(tmp_path):
    cache = CovarianceCache(tmp_path / "covariance")
    assert cache.load("sd1-abc-cs1", CORPUS.corpus_id) is None
    covariance = estimate_covariance(_encoder(_encodings()), CORPUS)
    path = cache.save("sd1-abc-cs1", covariance)
    loaded = cache.load("sd1-abc-cs1", CORPUS.corpus_id)
    assert torch.equal(loaded.matrix, covariance.matrix)
    assert (loaded.count, loaded.corpus_id, loaded.prompts, loaded.converged) == (
        140,
        CORPUS.corpus_id,
        20,
        False,
    )
    shutil.copy(path, cache.path("sdxl-def-cs2"))
    with pytest.raises(CovarianceError, match="is not the covariance"):
        cache.load("sdxl-def-cs2", CORPUS.corpus_id)
    with pytest.raises(CovarianceError, match="cache id"):
        cache.path("../escape")


def test_the_cache_does_not_hand_out_an_estimate_of_another_corpus(tmp_path):
    cache = CovarianceCache(tmp_path)
    cache.save("sd1-abc", estimate_covariance(_encoder(_encodings()), CORPUS))
    assert cache.load("sd1-abc", Corpus.of(PROMPTS[:-1]).corpus_id) is None
