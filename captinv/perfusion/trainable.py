"""The training side of one Perfusion concept, as an `EditSource`.

Only the V targets are parameters (one float32 vector per cross-attention
layer, initialised to W_V i_super); the K targets stay locked to W_K i_super, so
`parameters()` can be handed to the optimiser as it is (lucidrains' port
trained the keys instead of the values through an inverted `parameters()`).
The target input i* arrives every step through `set_input`, typically
`rank1.straight_through(ema, batch_mean)`, and keeps its gradient: the gate
direction u = C⁻¹i*/(i*ᵀC⁻¹i*) is recomputed from it with the covariance's
Cholesky factor, so the concept embedding also learns through u and s(e)·i*.

Use: `editing.install(unet, trainable)`, then per step `set_input(...)`, the
UNet forward and backward; `editing.remove(unet)` when done.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from captinv.perfusion.concept import PerfusionConcept
from captinv.perfusion.covariance import covariance_solve
from captinv.perfusion.editing import Kind, SharedEdit
from captinv.perfusion.errors import PerfusionError
from captinv.perfusion.layers import CrossAttentionLayer
from captinv.perfusion.rank1 import gate_direction

TRAIN_BETA = 0.75  # "higher train bias gives a better Pareto front" (paper, p. 9)
TRAIN_TAU = 0.1


class TrainableConcept(nn.Module):
    def __init__(
        self,
        layers: Sequence[CrossAttentionLayer],
        i_super: torch.Tensor,
        covariance_factor: torch.Tensor,
        *,
        beta: float = TRAIN_BETA,
        tau: float = TRAIN_TAU,
    ) -> None:
        super().__init__()
        self.layer_names = [layer.name for layer in layers]
        self._index = {name: i for i, name in enumerate(self.layer_names)}
        self.beta, self.tau = beta, tau
        self.register_buffer("i_super", i_super.detach().clone())
        self.register_buffer("covariance_factor", covariance_factor.detach().to(torch.float64).clone())
        with torch.no_grad():
            self.v_targets = nn.ParameterList(
                nn.Parameter(F.linear(self.i_super.to(layer.to_v.weight), layer.to_v.weight).float())
                for layer in layers
            )
        self._step: SharedEdit | None = None

    def set_input(self, i_star: torch.Tensor) -> None:
        """This step's target input [d]; its gradient reaches whatever produced it."""
        direction = gate_direction(i_star.double(), covariance_solve(self.covariance_factor, i_star))
        self._step = SharedEdit(
            i_star=i_star.unsqueeze(0),
            direction=direction.unsqueeze(0),
            mix=torch.ones(1, 1, dtype=torch.float64, device=i_star.device),
            beta=torch.tensor([self.beta], dtype=torch.float64, device=i_star.device),
            tau=torch.tensor([self.tau], dtype=torch.float64, device=i_star.device),
            i_super=self.i_super.unsqueeze(0),
        )

    def shared(self, device: torch.device, dtype: torch.dtype) -> SharedEdit:
        if self._step is None:
            raise PerfusionError("Call set_input(i_star) before the first UNet forward of a Perfusion step.")
        return self._step.to(device, dtype)

    def targets(
        self, layer: str, kind: Kind, device: torch.device, dtype: torch.dtype
    ) -> list[torch.Tensor | None]:
        if kind == "k":
            return [None]
        return [self.v_targets[self._index[layer]].to(device, dtype)]

    def to_concept(
        self,
        name: str,
        superclass: str,
        embedding: dict[str, torch.Tensor],
        i_star: torch.Tensor,
        metadata: dict[str, str] | None = None,
    ) -> PerfusionConcept:
        """The trained concept (CPU float32), with C⁻¹i* from the same shrunk covariance."""
        with torch.no_grad():
            c_inv_i_star = covariance_solve(self.covariance_factor, i_star.detach())
            return PerfusionConcept(
                name=name,
                superclass=superclass,
                embedding={key: rows.detach().float().cpu() for key, rows in embedding.items()},
                i_star=i_star.detach().float().cpu(),
                c_inv_i_star=c_inv_i_star.float().cpu(),
                i_super=self.i_super.detach().float().cpu().clone(),
                v_targets={n: t.detach().float().cpu() for n, t in zip(self.layer_names, self.v_targets)},
                metadata={"train_beta": repr(self.beta), "train_tau": repr(self.tau), **(metadata or {})},
            )
