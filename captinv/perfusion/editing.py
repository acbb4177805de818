"""Applying Perfusion edits to a UNet by wrapping its cross-attention projections.

Each `attn2.to_k` / `attn2.to_v` gets an instance-level `forward`. It removes
the C⁻¹-parallel part of every token before W and passes the remainder (and,
for a locked key, i_super) through the *class* forward looked up at call time
(`torch.nn.Linear.forward`, which the WebUI's LoRA extension replaces): LoRA on
the same layers still applies, and the edit uses the LoRA-modified W for every
term. Every attention backend of the WebUI and of diffusers calls
`to_k(context)` / `to_v(context)` (diffusers 0.25-0.26 add a LoRA `scale`
argument, which goes on to the projection), so the wrapper is independent of
the attention implementation. Any module that acts as a linear layer is
wrapped the same way (Forge's projections are not `nn.Linear`s).

A closed gate is not the identity (it sends i* to 0), so "no concept" must
mean "no wrapper": `remove` deletes the instance attribute and the UNet is
then bit-identical to stock. The edit's own math runs in float32 (float64 for
float64 inputs), outside any autocast; only the wrapped W follows the caller's
precision, and the result is cast back to the input dtype. Constants are made
in float64 on the CPU and reach the device already in the compute dtype, so a
device without float64 (Apple's MPS) never sees one.

Global key locking (the paper's other mode, inference only): the keys of
every token come from the prompt with the superclass word in the concept's
place, the values still from the concept prompt. The caller registers
(context, superclass context) pairs; a K projection whose input row equals a
registered context computes that row's keys from its superclass twin, and any
other row (the unconditional prompt, an unregistered one) keeps the local lock.

Where the concept tensors come from is an `EditSource`: fixed concepts at
inference (`ConceptSource`, here) or the training state (`trainable`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol

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
        return SharedEdit(**{f.name: place(getattr(self, f.name), device, dtype) for f in fields(self)})


def place(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` in `dtype` on `device`, converted where it is (a float64 CPU constant becomes
    float32 before it moves: MPS cannot hold float64, not even in passing)."""
    return tensor.to(dtype=dtype).to(device)


def no_autocast(device_type: str) -> AbstractContextManager:
    """Autocast switched off for this device type; nothing where autocast does not know the type
    (torch < 2.5 raises even for `enabled=False` on 'mps'), as nothing can have switched it on."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:
        return nullcontext()


class EditSource(Protocol):
    def shared(self, device: torch.device, dtype: torch.dtype) -> SharedEdit:
        """The concepts' inputs and gates for one call."""

    def targets(
        self, layer: str, kind: Kind, device: torch.device, dtype: torch.dtype
    ) -> list[torch.Tensor | None]:
        """Per concept, o* of this projection, or None for a key locked to W_K i_super."""

    def key_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the K projection edits: `x`, or under global locking its superclass twin."""


class _EditedForward:
    """Stored as `module.forward` on the instance; the original forward is found per call."""

    def __init__(self, module: nn.Module, layer: str, kind: Kind, source: EditSource, inner) -> None:
        self.module, self.layer, self.kind, self.source = module, layer, kind, source
        self.inner = inner  # a foreign instance-level forward that was there first, restored on removal

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """`args`/`kwargs` (diffusers 0.25-0.26 pass a LoRA scale) go on to the projection."""
        if self.kind == "k":
            x = self.source.key_input(x)
        compute = torch.promote_types(x.dtype, torch.float32)
        shared = self.source.shared(x.device, compute)
        targets = self.source.targets(self.layer, self.kind, x.device, compute)
        flat = x.reshape(-1, x.shape[-1])
        with no_autocast(x.device.type):  # a trainer's autocast must not lower the gate's precision
            s = coefficients(flat.to(compute), shared.direction)
            rows = [orthogonal_part(flat.to(compute), s, shared.i_star, shared.mix)]
        locked = any(t is None for t in targets)
        if locked:  # W_K i_super through the same call; forward(0) is the bias to take off it
            rows += [shared.i_super, shared.i_super.new_zeros(1, flat.shape[1])]
        forward = self.inner if self.inner is not None else type(self.module).forward.__get__(self.module)
        out = forward(torch.cat(rows).to(x.dtype), *args, **kwargs).to(compute)
        with no_autocast(x.device.type):
            y = out[: flat.shape[0]]
            if locked:
                super_keys = out[flat.shape[0] : -1] - out[-1]
                targets = [super_keys[j] if t is None else t for j, t in enumerate(targets)]
            result = y + gated_targets(s, torch.stack(targets), shared.beta, shared.tau)
        return result.to(x.dtype).reshape(*x.shape[:-1], result.shape[-1])


def _projections(
    layers: Sequence[CrossAttentionLayer],
) -> Iterator[tuple[CrossAttentionLayer, Kind, nn.Module]]:
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
        i_star = torch.stack([c.i_star.detach().cpu().double() for c in concepts])
        direction = torch.stack([c.direction().cpu() for c in concepts])
        self._base = SharedEdit(
            i_star=i_star,
            direction=direction,
            mix=projection_mix(i_star, direction, exact=exact),
            beta=torch.tensor(list(beta), dtype=torch.float64),
            tau=torch.tensor(list(tau), dtype=torch.float64),
            i_super=torch.stack([c.i_super.detach().cpu().double() for c in concepts]),
        )
        self._concepts = list(concepts)
        self._shared: dict[tuple[torch.device, torch.dtype], SharedEdit] = {}
        self._targets: dict[tuple[str, Kind, torch.device, torch.dtype], list[torch.Tensor | None]] = {}
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._placed: dict[tuple[torch.device, torch.dtype], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.globally_locked_rows = 0  # key rows taken from a superclass twin so far

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
            self._targets[key] = [None if t is None else place(t, device, dtype) for t in found]
        return self._targets[key]

    def lock_keys(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Lock keys globally for these contexts [N, d]: (concept prompt, superclass prompt) rows."""
        for context, twin in pairs:
            if context.shape != twin.shape or context.dim() != 2:
                raise PerfusionError(
                    f"Global locking pairs a context with its superclass twin of the same shape [tokens, "
                    f"width]; got {tuple(context.shape)} and {tuple(twin.shape)}."
                )
        self._pairs = [(c.detach(), t.detach()) for c, t in pairs]
        self._placed.clear()

    def key_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self._pairs or x.dim() != 3:
            return x
        key = (x.device, x.dtype)
        if key not in self._placed:
            self._placed[key] = [(place(c, *key), place(t, *key)) for c, t in self._pairs]
        swapped = x
        for row in range(x.shape[0]):
            twin = next(
                (t for c, t in self._placed[key] if c.shape == x.shape[1:] and torch.equal(x[row], c)), None
            )
            if twin is not None:
                swapped = x.clone() if swapped is x else swapped
                swapped[row] = twin
                self.globally_locked_rows += 1
        return swapped


def _per_concept(value: float | Sequence[float] | None, defaults: list[float], label: str) -> list[float]:
    if value is None:
        return defaults
    if isinstance(value, (int, float)):
        return [float(value)] * len(defaults)
    values = [float(v) for v in value]
    if len(values) != len(defaults):
        raise PerfusionError(f"Got {len(values)} {label} values for {len(defaults)} concepts.")
    return values


def _check_one_covariance(concepts: Sequence[PerfusionConcept]) -> None:
    """The exact projection mixes the concepts' C⁻¹-metrics; it is only the paper's projection when
    they were trained against one covariance (the same text path and corpus)."""
    sources = {c.name: c.metadata.get("covariance") for c in concepts}
    if len(set(sources.values())) > 1 or None in sources.values():
        listed = ", ".join(f"'{name}': {source or 'unknown'}" for name, source in sources.items())
        raise PerfusionError(
            f"The exact projection needs concepts trained against one covariance (the same model and "
            f"corpus); these were not ({listed}). Use the approximate projection."
        )


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
    sequence gives one per concept. Any finite β and τ > 0 is applied (the
    math is defined); user input is checked against the usable ranges by
    `tags.parse_knobs` first. `projection="exact"` removes the overlap of
    non-orthogonal concepts exactly (only for concepts trained against one
    covariance); the approximation is the authors' default. Keys stay locally
    locked until `lock_keys` registers contexts. For hosts with separate
    activate/deactivate callbacks; otherwise use `applied`.
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
    if not all(math.isfinite(b) for b in betas) or not all(math.isfinite(t) and t > 0 for t in taus):
        raise PerfusionError(f"The gate needs finite β and a positive, finite τ (got β {betas}, τ {taus}).")
    if projection == "exact" and len(concepts) > 1:
        _check_one_covariance(concepts)
    layers = cross_attention_layers(unet)
    for concept in concepts:
        concept.check_fits(layers)
    if is_installed(unet):
        raise PerfusionError(
            "Perfusion edits are already active on this UNet; remove them before applying others."
        )
    return install(unet, ConceptSource(concepts, beta=betas, tau=taus, exact=projection == "exact"))


def lock_keys(unet: nn.Module, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> ConceptSource:
    """Global key locking for the active concepts: each (context, superclass context) pair [N, d]
    makes a K projection that sees `context` as a batch row compute its keys from the twin (see
    `superclass_prompt`). Replaces earlier pairs; an empty list restores local locking."""
    source = next((wrapper.source for _, wrapper in _wrapped(unet)), None)
    if not isinstance(source, ConceptSource):
        raise PerfusionError("No Perfusion concept is active on this UNet; activate one before locking keys.")
    source.lock_keys(pairs)
    return source


def superclass_prompt(prompt: str, concepts: Sequence[PerfusionConcept]) -> str:
    """`prompt` with each concept's word replaced by its superclass word (whole words, any case,
    as embedding names are matched): the prompt whose encoding global locking takes the keys from."""
    for concept in concepts:
        pattern = rf"(?<![\w-]){re.escape(concept.name)}(?![\w-])"
        prompt = re.sub(pattern, concept.superclass, prompt, flags=re.IGNORECASE)
    return prompt


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
