"""The training side of one Perfusion concept, as an `EditSource`.

Only the V targets are parameters (one float32 vector per cross-attention
layer, initialised to W_V i_super); the K targets stay locked to W_K i_super, so
`parameters()` can be handed to the optimiser as it is (lucidrains' port
trained the keys instead of the values through an inverted `parameters()`).
The target input i* arrives every step through `set_input`, typically
`rank1.straight_through(ema, batch_mean)`, and keeps its gradient: the gate
direction u = C⁻¹i*/(i*ᵀC⁻¹i*) is recomputed from it with the covariance's
Cholesky factor, so the concept embedding also learns through u and s(e)·i*.
That solve runs in float64 on the CPU (the factor never moves to the device:
MPS has no float64); what reaches the wrapped projections is float32.

Use: `editing.install(unet, trainable)`, then per step `set_input(...)`, the
UNet forward and backward; `editing.remove(unet)` when done.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
        self.covariance_factor = covariance_factor.detach().cpu().to(torch.float64)  # stays on the CPU
        with torch.no_grad():
            self.v_targets = nn.ParameterList(
                nn.Parameter(projected(layer.to_v, self.i_super)) for layer in layers
            )
        self._gates = torch.tensor([[1.0, beta, tau]], dtype=torch.float64)  # mix, β, τ (one concept)
        self._step: SharedEdit | None = None
        self._placed: dict[tuple[torch.device, torch.dtype], SharedEdit] = {}

    def set_input(self, i_star: torch.Tensor) -> None:
        """This step's target input [d]; its gradient reaches whatever produced it."""
        host = i_star.cpu().to(torch.float64)
        direction = gate_direction(host, covariance_solve(self.covariance_factor, host))
        self._step = SharedEdit(
            i_star=i_star.unsqueeze(0),
            direction=direction.unsqueeze(0),
            mix=self._gates[:, :1],
            beta=self._gates[0, 1:2],
            tau=self._gates[0, 2:3],
            i_super=self.i_super.unsqueeze(0),
        )
        self._placed.clear()

    def shared(self, device: torch.device, dtype: torch.dtype) -> SharedEdit:
        if self._step is None:
            raise PerfusionError("Call set_input(i_star) before the first UNet forward of a Perfusion step.")
        key = (device, dtype)
        if key not in self._placed:  # once per step, not once per wrapped projection
            self._placed[key] = self._step.to(device, dtype)
        return self._placed[key]

    def key_input(self, x: torch.Tensor) -> torch.Tensor:
        """Keys are locked locally in training (global locking is inference-only, as in the paper)."""
        return x

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
            c_inv_i_star = covariance_solve(self.covariance_factor, i_star.detach().cpu().double())
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


@torch.no_grad()
def projected(module: nn.Module, vector: torch.Tensor) -> torch.Tensor:
    """W·vector (float32) through the module's own forward, less its bias: the rule the wrapper uses
    for the locked key W_K i_super, so any linear-like module (a LoRA-patched one, Forge's) works."""
    weight = next(module.parameters(), None)
    like = (
        {"device": vector.device, "dtype": torch.float32}
        if weight is None
        else {"device": weight.device, "dtype": weight.dtype}
    )
    rows = torch.stack([vector, torch.zeros_like(vector)]).to(**like)
    out = module(rows).float()
    return (out[0] - out[1]).to(vector.device)
