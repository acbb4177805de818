"""The gated rank-1 edit of one projection, as pure tensor functions.

ROME's closed-form edit W' = W + (o* − W i*)(C⁻¹i*)ᵀ / (i*ᵀC⁻¹i*) acts on an
input e as W e − s(e)·W i* + s(e)·o*, with s(e) = uᵀe and the gate direction
u = C⁻¹i* / (i*ᵀC⁻¹i*): the part of e that is C⁻¹-orthogonal to i* goes
through W, the parallel part is sent to o*. Perfusion replaces the linear
coefficient on o* by a sigmoid gate σ((s − β)/τ), so per token

    W_new e = W e − s(e)·W i* + σ((s(e) − β)/τ)·o*.

Consequences the callers rely on: C enters only through u, so the scale of C
is irrelevant and a concept file needs C⁻¹i* (any scale), not C; and a closed
gate sends i* to 0, not to W i*, so "off" must mean "not wrapped".

For m concepts the removed part is the C⁻¹-orthogonal projection of e onto
span{i*_j}: Proj(e) = I (UᵀI)⁻¹ Uᵀ e with I = [i*_j], U = [u_j]. This equals the
paper's Appendix B projection (I (IᵀC⁻¹I)⁻¹ (C⁻¹I)ᵀ e) because C⁻¹I = U·diag,
and it needs only the vectors a concept file stores. The approximation the
authors recommend drops (UᵀI)⁻¹, i.e. treats the i*_j as C⁻¹-orthogonal.

An edited projection is W(orthogonal_part(e)) + gated_targets(s(e)).
Shapes: rows are concepts (m), the last axis of x is the text width d, targets
are [m, out]. Every function works on any leading batch axes.
"""

from __future__ import annotations

import torch

from captinv.perfusion.errors import PerfusionError

MAX_PROJECTION_CONDITION = 1e6
EMA_DECAY = 0.99  # of i*, as in the paper
"""Beyond this the exact multi-concept projection amplifies noise more than it removes overlap."""


def gate_direction(i_star: torch.Tensor, c_inv_i_star: torch.Tensor) -> torch.Tensor:
    """u = C⁻¹i* / (i*ᵀC⁻¹i*), so that s(e) = uᵀe and s(i*) = 1; rows are concepts."""
    energy = (i_star * c_inv_i_star).sum(-1, keepdim=True)
    if not bool((energy > 0).all()):
        raise PerfusionError("i*ᵀC⁻¹i* is not positive: the covariance or the concept inputs are corrupt.")
    return c_inv_i_star / energy


def coefficients(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """s_j(e) = u_jᵀe for every token: [..., d] x [m, d] -> [..., m]."""
    return x @ directions.transpose(0, 1)


def gate(s: torch.Tensor, beta: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """σ((s − β)/τ) per concept; β, τ are [m] (or scalars)."""
    return torch.sigmoid((s - beta) / tau)


def projection_mix(i_stars: torch.Tensor, directions: torch.Tensor, *, exact: bool) -> torch.Tensor:
    """The [m, m] matrix P with Proj(e) = Σ_j (P s(e))_j i*_j: (UᵀI)⁻¹ when exact, else the identity.

    With one concept both are [[1]]. The exact form refuses near-parallel i*s,
    whose separation would be dominated by rounding.
    """
    m = i_stars.shape[0]
    if not exact or m == 1:
        return torch.eye(m, dtype=i_stars.dtype, device=i_stars.device)
    overlap = directions.double() @ i_stars.double().transpose(0, 1)  # M_jk = u_jᵀ i*_k, diag 1
    condition = torch.linalg.cond(overlap)
    if not bool(torch.isfinite(condition)) or float(condition) > MAX_PROJECTION_CONDITION:
        raise PerfusionError(
            "These concepts' target inputs are nearly parallel, so the exact projection is unstable; "
            "use the approximate projection or fewer concepts."
        )
    return torch.linalg.inv(overlap).to(i_stars.dtype)


def orthogonal_part(
    x: torch.Tensor, s: torch.Tensor, i_stars: torch.Tensor, mix: torch.Tensor
) -> torch.Tensor:
    """e − Proj(e): what still goes through W. Removing it in input space, before W, avoids
    subtracting two large outputs in half precision and uses a LoRA-modified W for both parts."""
    return x - (s @ mix.transpose(0, 1)) @ i_stars


def gated_targets(
    s: torch.Tensor, targets: torch.Tensor, beta: torch.Tensor, tau: torch.Tensor
) -> torch.Tensor:
    """Σ_j σ((s_j − β_j)/τ_j)·o*_j for every token: [..., m] x [m, out] -> [..., out]."""
    return gate(s, beta, tau) @ targets


def ema_update(average: torch.Tensor, value: torch.Tensor, decay: float = EMA_DECAY) -> torch.Tensor:
    """The paper's running target input: i* ← decay·i* + (1 − decay)·ē, without gradient."""
    return decay * average.detach() + (1.0 - decay) * value.detach()


def straight_through(average: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The running i* in the forward pass, the batch's ē in the backward pass.

    The author told lucidrains that i* "needs gradients"; this lets the concept
    embedding learn through u and the removed part s(e)·i* while the value stays
    the smoothed one.
    """
    return average.detach() + value - value.detach()
