"""The gated rank-1 math against ROME's closed form and the paper's Appendix B projection (float64)."""

from __future__ import annotations

import pytest
import torch

from captinv.perfusion.errors import PerfusionError
from captinv.perfusion.rank1 import (
    coefficients,
    ema_update,
    gate,
    gate_direction,
    gated_targets,
    orthogonal_part,
    projection_mix,
    straight_through,
)

D, OUT = 10, 6


def _spd(draw: torch.Generator) -> torch.Tensor:
    a = torch.randn(D, D, generator=draw, dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(D, dtype=torch.float64)


@pytest.fixture
def draw() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_ungated_form_is_rome_closed_form(draw):
    w = torch.randn(OUT, D, generator=draw, dtype=torch.float64)
    c = _spd(draw)
    i_star, o_star = (
        torch.randn(D, generator=draw, dtype=torch.float64),
        torch.randn(OUT, generator=draw, dtype=torch.float64),
    )
    c_inv_i = torch.linalg.solve(c, i_star)
    rome = w + torch.outer(o_star - w @ i_star, c_inv_i) / (i_star @ c_inv_i)
    e = torch.randn(5, D, generator=draw, dtype=torch.float64)
    s = coefficients(e, gate_direction(i_star, c_inv_i)[None])  # [5, 1]
    decomposed = e @ w.T - s * (w @ i_star) + s * o_star
    torch.testing.assert_close(decomposed, e @ rome.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(rome @ i_star, o_star, rtol=0, atol=1e-12)


def test_gate_values_at_the_paper_settings():
    s = torch.tensor([1.0], dtype=torch.float64)
    assert float(gate(s, torch.tensor(0.75), torch.tensor(0.1))) == pytest.approx(0.9241418, abs=1e-7)
    assert float(gate(s, torch.tensor(0.7), torch.tensor(0.15))) == pytest.approx(0.8807971, abs=1e-7)
    assert float(gate(s, torch.tensor(0.5), torch.tensor(1e-6))) == 1.0


def test_gate_direction_ignores_the_scale_of_c(draw):
    c, i_star = _spd(draw), torch.randn(D, generator=draw, dtype=torch.float64)
    u = gate_direction(i_star, torch.linalg.solve(c, i_star))
    torch.testing.assert_close(
        gate_direction(i_star, torch.linalg.solve(123.0 * c, i_star)), u, rtol=1e-12, atol=0
    )
    assert float(u @ i_star) == pytest.approx(1.0, abs=1e-14)
    with pytest.raises(PerfusionError, match="not positive"):
        gate_direction(i_star, -torch.linalg.solve(c, i_star))


def _cholesky_qr_projection(i_stars: torch.Tensor, c_inv: torch.Tensor) -> torch.Tensor:
    """Appendix B: a C⁻¹-orthonormal basis of span{i*} from the Cholesky root of C⁻¹ and QR, as a matrix."""
    root = torch.linalg.cholesky(c_inv)  # C⁻¹ = L Lᵀ, so <a, b>_{C⁻¹} = (Lᵀa)·(Lᵀb)
    q, _ = torch.linalg.qr(root.T @ i_stars.T)
    basis = torch.linalg.solve(root.T, q)  # columns are C⁻¹-orthonormal
    return basis @ basis.T @ c_inv  # Proj(e) = Σ_k b_k (b_kᵀ C⁻¹ e)


def test_exact_multi_concept_projection_matches_appendix_b(draw):
    c = _spd(draw)
    i_stars = torch.randn(3, D, generator=draw, dtype=torch.float64)
    directions = gate_direction(i_stars, torch.linalg.solve(c, i_stars.T).T)
    mix = projection_mix(i_stars, directions, exact=True)
    e = torch.randn(4, D, generator=draw, dtype=torch.float64)
    reference = e - e @ _cholesky_qr_projection(i_stars, torch.linalg.inv(c)).T
    torch.testing.assert_close(
        orthogonal_part(e, coefficients(e, directions), i_stars, mix), reference, rtol=0, atol=1e-10
    )
    # each i*_j lies in the span: its orthogonal remainder, the part that still goes through W, is zero
    remainder = orthogonal_part(i_stars, coefficients(i_stars, directions), i_stars, mix)
    torch.testing.assert_close(remainder, torch.zeros_like(i_stars), rtol=0, atol=1e-10)
    # the approximation is not exact for correlated i*s
    approximate = projection_mix(i_stars, directions, exact=False)
    assert not torch.allclose(
        orthogonal_part(e, coefficients(e, directions), i_stars, approximate), reference, atol=1e-3
    )


def test_approximation_is_exact_for_c_inverse_orthogonal_inputs(draw):
    c = _spd(draw)
    i_stars = torch.randn(2, D, generator=draw, dtype=torch.float64)
    c_inv_i1 = torch.linalg.solve(c, i_stars[0])
    i_stars[1] -= (c_inv_i1 @ i_stars[1]) / (c_inv_i1 @ i_stars[0]) * i_stars[0]  # C⁻¹-orthogonalise
    directions = gate_direction(i_stars, torch.linalg.solve(c, i_stars.T).T)
    exact = projection_mix(i_stars, directions, exact=True)
    torch.testing.assert_close(exact, projection_mix(i_stars, directions, exact=False), rtol=0, atol=1e-12)


def test_parallel_concepts_are_refused_by_the_exact_projection(draw):
    i_star = torch.randn(D, generator=draw, dtype=torch.float64)
    i_stars = torch.stack([i_star, i_star * (1 + 1e-9)])
    with pytest.raises(PerfusionError, match="parallel"):
        projection_mix(i_stars, gate_direction(i_stars, i_stars), exact=True)


def test_two_concepts_each_reach_their_own_target(draw):
    w = torch.randn(OUT, D, generator=draw, dtype=torch.float64)
    c = _spd(draw)
    i_stars = torch.randn(2, D, generator=draw, dtype=torch.float64)
    targets = torch.randn(2, OUT, generator=draw, dtype=torch.float64)
    directions = gate_direction(i_stars, torch.linalg.solve(c, i_stars.T).T)
    s = coefficients(i_stars, directions)
    assert float(s[0, 1]) < 0.5 and float(s[1, 0]) < 0.5  # the other concept's gate stays shut
    beta, tau = torch.full((2,), 0.5, dtype=torch.float64), torch.full((2,), 1e-6, dtype=torch.float64)
    mix = projection_mix(i_stars, directions, exact=True)
    out = orthogonal_part(i_stars, s, i_stars, mix) @ w.T + gated_targets(s, targets, beta, tau)
    torch.testing.assert_close(out, targets, rtol=0, atol=1e-10)


def test_running_target_input_and_straight_through():
    average = torch.tensor([1.0, 0.0])
    value = torch.tensor([0.0, 1.0], requires_grad=True)
    torch.testing.assert_close(ema_update(average, value), torch.tensor([0.99, 0.01]))
    used = straight_through(average, value)
    torch.testing.assert_close(used, average)  # forward: the running value
    (used * torch.tensor([2.0, 3.0])).sum().backward()
    torch.testing.assert_close(
        value.grad, torch.tensor([2.0, 3.0])
    )  # backward: as if it were the batch value
