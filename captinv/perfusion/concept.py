"""A trained Perfusion concept and its ~100 KB safetensors file.

What a concept needs at inference, and nothing more: the concept word's
embedding rows (per text encoder), the target input i*, C⁻¹i* (so neither
inference nor multi-concept projection needs the covariance), the superclass
encoding i_super (the locked K targets are W_K i_super, recomputed against the
checkpoint in use, which is why 16 or 70 K vectors need not be stored), and one
learned V target per cross-attention layer. Optional `k.*` targets pin the keys
explicitly (trained-K ablation, or keys frozen across checkpoints).

File layout (all float32): `emb.<encoder key>` [n, width] with the backends'
encoder keys (`emb_params`, or `clip_l`/`clip_g`), `i_star`, `ci_star`,
`i_super` [d], `v.<layer>` and `k.<layer>` [out] with canonical layer names;
string metadata `format=captinv.perfusion`, `version`, `name`, `superclass`,
`beta`, `tau`, `lock`, `context_dim`, `layer_naming`, plus the caller's own keys
(the training run's: text-path fingerprint, covariance id, gate selectivity...).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from captinv import files
from captinv.embedding_io import PERFUSION_FORMAT as FORMAT
from captinv.errors import FileFormatError
from captinv.perfusion.errors import ConceptFileError
from captinv.perfusion.layers import CANONICAL, CrossAttentionLayer
from captinv.perfusion.rank1 import gate_direction

VERSION = 1
_RESERVED = ("format", "version", "name", "superclass", "beta", "tau", "lock", "context_dim", "layer_naming")
_LOCKS = ("local", "global")
_BYTES_PER_VALUE = 4  # stored as float32


@dataclass(frozen=True)
class ConceptSize:
    """Bytes of tensor data per part, as stored (the file adds a small header)."""

    embedding: int
    inputs: int
    values: int
    keys: int

    @property
    def total(self) -> int:
        return self.embedding + self.inputs + self.values + self.keys

    def __str__(self) -> str:
        parts = {
            "embedding": self.embedding,
            "i*/C⁻¹i*/i_super": self.inputs,
            "V": self.values,
            "K": self.keys,
        }
        listed = ", ".join(f"{label} {size / 1000:.1f}" for label, size in parts.items() if size)
        return f"{self.total / 1000:.1f} KB ({listed})"


@dataclass
class PerfusionConcept:
    name: str
    superclass: str
    embedding: dict[str, torch.Tensor]  # encoder key -> [n, width]
    i_star: torch.Tensor  # [d] the target input (text-encoder output at the concept position)
    c_inv_i_star: torch.Tensor  # [d] C⁻¹ i*, any positive scale
    i_super: torch.Tensor  # [d] the superclass word's encoding at the same position
    v_targets: dict[str, torch.Tensor]  # canonical layer name -> [out]
    k_targets: dict[str, torch.Tensor] = field(default_factory=dict)  # empty: keys locked to W_K i_super
    beta: float = 0.7  # inference gate bias: higher weakens the concept
    tau: float = 0.15  # inference gate temperature
    lock: str = "local"  # inference key locking: "local" or "global"
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._validate()

    @property
    def context_dim(self) -> int:
        return self.i_star.shape[0]

    def renamed(self, name: str) -> PerfusionConcept:
        """This concept under another name (the word a prompt uses for it), e.g. its file's name."""
        return dataclasses.replace(self, name=name)

    def direction(self) -> torch.Tensor:
        """u = C⁻¹i* / (i*ᵀC⁻¹i*) in float64: s(e) = uᵀe is the gate's input."""
        return gate_direction(self.i_star.double(), self.c_inv_i_star.double())

    def size(self) -> ConceptSize:
        def count(tensors) -> int:
            return sum(t.numel() for t in tensors) * _BYTES_PER_VALUE

        return ConceptSize(
            embedding=count(self.embedding.values()),
            inputs=count((self.i_star, self.c_inv_i_star, self.i_super)),
            values=count(self.v_targets.values()),
            keys=count(self.k_targets.values()),
        )

    def check_fits(self, layers: Sequence[CrossAttentionLayer]) -> None:
        """Refuse a model whose cross-attention layers differ from those this concept was trained on."""
        widths = {layer.context_dim for layer in layers}
        if widths != {self.context_dim}:
            raise ConceptFileError(
                f"'{self.name}' was trained for {self.context_dim}-wide text encodings; this model uses "
                f"{sorted(widths)}. Use a concept trained for this model family."
            )
        live = {layer.name: layer for layer in layers}
        if set(live) != set(self.v_targets):
            missing, extra = sorted(set(live) - set(self.v_targets)), sorted(set(self.v_targets) - set(live))
            raise ConceptFileError(
                f"'{self.name}' does not match this UNet's cross-attention layers "
                f"(missing {missing[:3]}, unknown {extra[:3]}); it was trained for another model family."
            )
        for kind, targets in (("v", self.v_targets), ("k", self.k_targets)):
            for layer, target in targets.items():
                out = live[layer].projection(kind).out_features
                if target.shape[0] != out:
                    raise ConceptFileError(
                        f"'{self.name}': {kind}.{layer} has {target.shape[0]} values, the model needs {out}."
                    )

    def save(self, path: Path, *, overwrite: bool = False) -> Path:
        return files.write_file(Path(path), self.to_bytes(), overwrite=overwrite)

    def to_bytes(self) -> bytes:
        """The concept file's bytes (float32 tensors, the same bytes for the same concept)."""
        tensors = {f"emb.{key}": rows for key, rows in self.embedding.items()}
        tensors |= {"i_star": self.i_star, "ci_star": self.c_inv_i_star, "i_super": self.i_super}
        tensors |= {f"v.{layer}": t for layer, t in self.v_targets.items()}
        tensors |= {f"k.{layer}": t for layer, t in self.k_targets.items()}
        own = {
            "format": FORMAT,
            "version": str(VERSION),
            "name": self.name,
            "superclass": self.superclass,
            "beta": repr(float(self.beta)),
            "tau": repr(float(self.tau)),
            "lock": self.lock,
            "context_dim": str(self.context_dim),
            "layer_naming": "diffusers",
        }
        tensors = {key: value.detach().to(torch.float32) for key, value in tensors.items()}
        return files.safetensors_bytes(tensors, {**self.metadata, **own})

    @classmethod
    def load(cls, path: Path, name: str | None = None) -> PerfusionConcept:
        """The concept in `path`, called `name` when given (the stored name stays in the file)."""
        path = Path(path)

        def check(_keys: list[str], metadata: dict[str, str]) -> None:
            if metadata.get("format") != FORMAT:
                raise ConceptFileError(
                    f"{path.name} is not a captinv Perfusion concept (format '{metadata.get('format')}')."
                )

        try:
            tensors, metadata = files.read_safetensors(path, check=check)
        except FileFormatError as err:
            raise ConceptFileError(err.message) from err
        if not metadata.get("version", "").isdigit() or int(metadata["version"]) > VERSION:
            raise ConceptFileError(
                f"{path.name} has version {metadata.get('version')}; update captinv to read it."
            )
        try:
            concept = cls(
                name=metadata["name"],
                superclass=metadata["superclass"],
                embedding=_group(tensors, "emb."),
                i_star=tensors["i_star"],
                c_inv_i_star=tensors["ci_star"],
                i_super=tensors["i_super"],
                v_targets=_group(tensors, "v."),
                k_targets=_group(tensors, "k."),
                beta=float(metadata["beta"]),
                tau=float(metadata["tau"]),
                lock=metadata.get("lock", "local"),
                metadata={k: v for k, v in metadata.items() if k not in _RESERVED},
            )
        except (KeyError, ValueError) as err:
            raise ConceptFileError(f"{path.name} lacks or garbles {err}; the file is damaged.") from err
        if str(concept.context_dim) != metadata.get("context_dim"):
            raise ConceptFileError(
                f"{path.name}: tensors do not match its recorded context_dim; the file is damaged."
            )
        return concept if name is None else concept.renamed(name)

    def _validate(self) -> None:
        def fail(problem: str) -> None:
            raise ConceptFileError(f"Perfusion concept '{self.name}': {problem}.")

        if not self.name or not self.superclass:
            fail("needs a name and a superclass word")
        inputs = (self.i_star, self.c_inv_i_star, self.i_super)
        if any(t.dim() != 1 for t in inputs) or len({t.shape[0] for t in inputs}) != 1:
            fail("i*, C⁻¹i* and i_super must be vectors of one width")
        if not self.embedding or any(r.dim() != 2 for r in self.embedding.values()):
            fail("needs embedding rows [n, width] for each text encoder")
        if len({r.shape[0] for r in self.embedding.values()}) != 1:
            fail("every text encoder needs the same number of embedding rows")
        if not self.v_targets:
            fail("has no V targets")
        if not set(self.k_targets) <= set(self.v_targets):
            fail("has K targets for layers without V targets")
        for targets in (self.v_targets, self.k_targets):
            for layer, target in targets.items():
                if not CANONICAL.match(layer) or target.dim() != 1:
                    fail(f"target '{layer}' is not a vector under a canonical layer name")
        for layer, k_target in self.k_targets.items():
            if k_target.shape != self.v_targets[layer].shape:
                fail(f"K and V targets of {layer} differ in width")
        tensors = [*inputs, *self.embedding.values(), *self.v_targets.values(), *self.k_targets.values()]
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            fail("holds NaN or infinite values")
        if not (math.isfinite(self.beta) and math.isfinite(self.tau) and self.tau > 0):
            fail(f"gate needs a finite β and τ > 0 (got β={self.beta}, τ={self.tau})")
        if self.lock not in _LOCKS:
            fail(f"key locking is 'local' or 'global', not {self.lock!r}")
        if float((self.i_star.double() * self.c_inv_i_star.double()).sum()) <= 0:
            fail("i*ᵀC⁻¹i* is not positive")


def _group(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key.removeprefix(prefix): value for key, value in tensors.items() if key.startswith(prefix)}
