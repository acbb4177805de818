"""Applying Perfusion edits to a UNet by wrapping its cross-attention projections.

Each `attn2.to_k` / `attn2.to_v` gets an instance-level `forward`. It removes
the C⁻¹-parallel part of every token before W and passes the remainder (and,
for a locked key, i_super) through the *class* forward looked up at call time
(`torch.nn.Linear.forward`, which the WebUI's LoRA extension replaces): LoRA on
the same layers still applies, and the edit uses the LoRA-modified W for every
term. Every attention backend of the WebUI and of diffusers calls
`to_k(context)` / `to_v(context)`, so the wrapper is independent of the
attention implementation.

A closed gate is not the identity (it sends i* to 0), so "no concept" must
mean "no wrapper": `remove` deletes the instance attribute and the UNet is
then bit-identical to stock. The edit's own math runs in float32 (float64 for
float64 inputs), outside any autocast; only the wrapped W follows the caller's
precision, and the result is cast back to the input dtype.

Where the concept tensors come from is an `EditSource`: fixed concepts at
inference (`ConceptSource`, here) or the training state (`trainable`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Literal, Protocol

import torch
from torch import nn

from captinv.perfusion.concept import PerfusionConcept
from captinv.perfusion.errors import PerfusionError
from captinv.perfusion.layers import CrossAttentionLayer, cross_attention_layers
from captinv.perfusion.rank1 import coefficients, gated_targets, orthogonal_part, projection_mix

Kind = Literal["k", "v"]
Projection = Literal["approximate", "exact"]


@dataclass(frozen=True)
class SharedEdit:
    """The per-concept tensors every wrapped projection needs, on one device and dtype (m concepts)."""

    i_star: torch.Tensor  # [m, d]
    direction: torch.Tensor  # [m, d] u_j = C⁻¹i*_j / (i*_jᵀC⁻¹i*_j)
    mix: torch.Tensor  # [m, m] see rank1.projection_mix
    beta: torch.Tensor  # [m]
    tau: torch.Tensor  # [m]
    i_super: torch.Tensor  # [m, d]

    def to(self, device: torch.device, dtype: torch.dtype) -> SharedEdit:
        return SharedEdit(**{f.name: getattr(self, f.name).to(device, dtype) for f in fields(self)})


class EditSource(Protocol):
    def shared(self, device: torch.device, dtype: torch.dtype) -> SharedEdit:
        """The concepts' inputs and gates for one call."""

    def targets(
        self, layer: str, kind: Kind, device: torch.device, dtype: torch.dtype
    ) -> list[torch.Tensor | None]:
        """Per concept, o* of this projection, or None for a key locked to W_K i_super."""


class _EditedForward:
    """Stored as `module.forward` on the instance; the original forward is found per call."""

    def __init__(self, module: nn.Linear, layer: str, kind: Kind, source: EditSource, inner) -> None:
        self.module, self.layer, self.kind, self.source = module, layer, kind, source
        self.inner = inner  # a foreign instance-level forward that was there first, restored on removal

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        shared = self.source.shared(x.device, compute)
        targets = self.source.targets(self.layer, self.kind, x.device, compute)
        flat = x.reshape(-1, x.shape[-1])
        with torch.autocast(
            x.device.type, enabled=False
        ):  # a trainer's autocast must not lower the gate's precision
            s = coefficients(flat.to(compute), shared.direction)
            rows = [orthogonal_part(flat.to(compute), s, shared.i_star, shared.mix)]
        locked = any(t is None for t in targets)
        if locked:  # W_K i_super through the same call; forward(0) is the bias to take off it
            rows += [shared.i_super, shared.i_super.new_zeros(1, flat.shape[1])]
        forward = self.inner if self.inner is not None else type(self.module).forward.__get__(self.module)
        out = forward(torch.cat(rows).to(x.dtype)).to(compute)
        with torch.autocast(x.device.type, enabled=False):
            y = out[: flat.shape[0]]
            if locked:
                super_keys = out[flat.shape[0] : -1] - out[-1]
                targets = [super_keys[j] if t is None else t for j, t in enumerate(targets)]
            result = y + gated_targets(s, torch.stack(targets), shared.beta, shared.tau)
        return result.to(x.dtype).reshape(*x.shape[:-1], result.shape[-1])


def _projections(
    layers: Sequence[CrossAttentionLayer],
) -> Iterator[tuple[CrossAttentionLayer, Kind, nn.Linear]]:
    for layer in layers:
        yield layer, "k", layer.to_k
        yield layer, "v", layer.to_v


def install(unet: nn.Module, source: EditSource) -> list[CrossAttentionLayer]:
    """Wrap every cross-attention K and V projection; installing again only swaps the source."""
    layers = cross_attention_layers(unet)
    for layer, kind, module in _projections(layers):
        current = module.__dict__.get("forward")
        if isinstance(current, _EditedForward):
            current.source = source
        else:
            module.forward = _EditedForward(module, layer.name, kind, source, inner=current)
    return layers


def _wrapped(unet: nn.Module) -> Iterator[tuple[nn.Module, _EditedForward]]:
    """Every wrapped projection, found by its wrapper: works on any UNet, even one `install` refuses."""
    for module in unet.modules():
        current = module.__dict__.get("forward")
        if isinstance(current, _EditedForward):
            yield module, current


def remove(unet: nn.Module) -> int:
    """Unwrap every projection; returns how many were wrapped. Leaves no trace on the modules."""
    removed = 0
    for module, current in list(_wrapped(unet)):
        if current.inner is None:
            del module.forward
        else:
            module.forward = current.inner
        removed += 1
    return removed


def is_installed(unet: nn.Module) -> bool:
    return next(_wrapped(unet), None) is not None


class ConceptSource:
    """Fixed concepts with their gates, for inference; tensors are cached per device and dtype."""

    def __init__(
        self,
        concepts: Sequence[PerfusionConcept],
        *,
        beta: Sequence[float],
        tau: Sequence[float],
        exact: bool,
    ) -> None:
        i_star = torch.stack([c.i_star.double() for c in concepts])
        direction = torch.stack([c.direction() for c in concepts])
        self._base = SharedEdit(
            i_star=i_star,
            direction=direction,
            mix=projection_mix(i_star, direction, exact=exact),
            beta=torch.tensor(list(beta), dtype=torch.float64),
            tau=torch.tensor(list(tau), dtype=torch.float64),
            i_super=torch.stack([c.i_super.double() for c in concepts]),
        )
        self._concepts = list(concepts)
        self._shared: dict[tuple[torch.device, torch.dtype], SharedEdit] = {}
        self._targets: dict[tuple[str, Kind, torch.device, torch.dtype], list[torch.Tensor | None]] = {}

    def shared(self, device: torch.device, dtype: torch.dtype) -> SharedEdit:
        key = (device, dtype)
        if key not in self._shared:
            self._shared[key] = self._base.to(device, dtype)
        return self._shared[key]

    def targets(
        self, layer: str, kind: Kind, device: torch.device, dtype: torch.dtype
    ) -> list[torch.Tensor | None]:
        key = (layer, kind, device, dtype)
        if key not in self._targets:
            found = [(c.v_targets if kind == "v" else c.k_targets).get(layer) for c in self._concepts]
            self._targets[key] = [None if t is None else t.to(device, dtype) for t in found]
        return self._targets[key]


def _per_concept(value: float | Sequence[float] | None, defaults: list[float], label: str) -> list[float]:
    if value is None:
        return defaults
    if isinstance(value, (int, float)):
        return [float(value)] * len(defaults)
    values = [float(v) for v in value]
    if len(values) != len(defaults):
        raise PerfusionError(f"Got {len(values)} {label} values for {len(defaults)} concepts.")
    return values


def activate(
    unet: nn.Module,
    concepts: PerfusionConcept | Sequence[PerfusionConcept],
    *,
    beta: float | Sequence[float] | None = None,
    tau: float | Sequence[float] | None = None,
    projection: Projection = "approximate",
) -> list[CrossAttentionLayer]:
    """Check the concepts against this UNet and install their edits until `remove(unet)`.

    β and τ default to each concept's own; one number applies to all, a
    sequence gives one per concept. `projection="exact"` removes the overlap of
    non-orthogonal concepts exactly; the approximation is the authors' default.
    For hosts with separate activate/deactivate callbacks; otherwise use `applied`.
    """
    concepts = [concepts] if isinstance(concepts, PerfusionConcept) else list(concepts)
    if not concepts:
        raise PerfusionError("No Perfusion concept to apply.")
    if projection not in ("approximate", "exact"):
        raise PerfusionError(f"Unknown projection '{projection}': use 'approximate' or 'exact'.")
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        raise PerfusionError(f"A concept is listed twice: {names}.")
    betas = _per_concept(beta, [c.beta for c in concepts], "β")
    taus = _per_concept(tau, [c.tau for c in concepts], "τ")
    if not all(t > 0 for t in taus):
        raise PerfusionError(f"The gate temperature τ must be positive (got {taus}).")
    layers = cross_attention_layers(unet)
    for concept in concepts:
        concept.check_fits(layers)
    if is_installed(unet):
        raise PerfusionError(
            "Perfusion edits are already active on this UNet; remove them before applying others."
        )
    return install(unet, ConceptSource(concepts, beta=betas, tau=taus, exact=projection == "exact"))


@contextmanager
def applied(
    unet: nn.Module,
    concepts: PerfusionConcept | Sequence[PerfusionConcept],
    *,
    beta: float | Sequence[float] | None = None,
    tau: float | Sequence[float] | None = None,
    projection: Projection = "approximate",
) -> Iterator[list[CrossAttentionLayer]]:
    """The UNet with these concepts' edits while inside (see `activate`), stock again however the block ends."""
    layers = activate(unet, concepts, beta=beta, tau=tau, projection=projection)
    try:
        yield layers
    finally:
        remove(unet)
