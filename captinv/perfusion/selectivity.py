"""How selective a concept's gate is: open on the concept word, shut everywhere else.

The gate σ((uᵀe − β)/τ) decides, per token, how much of the concept's targets
replaces that token's keys and values. Measured at the concept's own β and τ:

- `off_concept_open`: the share of token positions (BOS, words, EOS) of
  prompts that name neither the concept nor its superclass whose gate exceeds
  `OPEN` (5 % of the concept leaks into that token), and `padding_open`, the
  same over the padding positions after EOS, which the UNet attends to as well;
- `superclass_gate`: the mean gate on the superclass word ("a photo of the cat"
  for a concept locked to "cat": the concept leaks onto that word);
- `concept_gate`: the mean gate on the concept word in prompts it was not
  trained with.

An estimate of C that misses the directions real prompts take makes u point
into them, and the gate opens on unrelated words; this is the number that
shows it. Without held-out prompts from the caller, generated ones are used
(drawn apart from the covariance corpus).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from captinv.backends.base import ModelBackend
from captinv.perfusion.concept import PerfusionConcept
from captinv.perfusion.corpus import generated_prompts, held_out_prompts

OPEN = 0.05
HELD_OUT = 32  # generated prompts measured after training
FRAMES = (
    "a photo of the {}",
    "the {} on the grass",
    "a painting of the {} next to a house",
    "the {} in a room, studio lighting",
    "two children playing with the {} in the park",
    "the {}",
)
"""Sentences around the concept or superclass word; none is a training template."""
_BATCH = 16


@dataclass(frozen=True)
class GateSelectivity:
    off_concept_open: float  # share of word positions of unrelated prompts with gate > OPEN
    padding_open: float  # the same over their padding positions
    superclass_gate: float  # mean gate on the superclass word
    concept_gate: float  # mean gate on the concept word
    beta: float
    tau: float
    prompts: int  # unrelated prompts measured

    def to_dict(self) -> dict[str, float]:
        return {key: round(value, 4) for key, value in asdict(self).items()}

    def to_metadata(self) -> dict[str, str]:
        return {"gate_selectivity": json.dumps(self.to_dict(), separators=(",", ":"))}

    def __str__(self) -> str:
        return (
            f"gate at β {self.beta:g}, τ {self.tau:g}: open (> {OPEN:g}) on {self.off_concept_open:.1%} of "
            f"unrelated tokens ({self.padding_open:.1%} of padding), superclass word {self.superclass_gate:.2f}, "
            f"concept word {self.concept_gate:.2f}"
        )


def _framed(frames: Sequence[str], word: str) -> tuple[list[str], list[str]]:
    """The frames around `word`, and the text before it in each."""
    return [frame.format(word) for frame in frames], [frame.split("{}")[0].strip() for frame in frames]


@torch.no_grad()
def gate_selectivity(
    backend: ModelBackend,
    concept: PerfusionConcept,
    prompts: Sequence[str] | None = None,
    *,
    frames: Sequence[str] = FRAMES,
    beta: float | None = None,
    tau: float | None = None,
) -> GateSelectivity:
    """Measure `concept`'s gate through `backend`'s text path; `prompts` are unrelated prompts
    (those naming the concept or its superclass are left out), generated ones by default, and
    `frames` the sentences ('... {} ...') the concept and superclass words are put in."""
    beta = concept.beta if beta is None else beta
    tau = concept.tau if tau is None else tau
    direction = concept.direction().float()
    banned = (concept.name.lower(), concept.superclass.lower())
    if prompts is None:
        prompts = held_out_prompts(HELD_OUT, generated_prompts(), banned)
    unrelated = [p for p in prompts if not set(p.lower().replace(",", " ").split()) & set(banned)]

    def gates(batch: list[str], embeddings: dict) -> torch.Tensor:
        context = backend.context(backend.conditioning(batch, embeddings)).float().cpu()
        return torch.sigmoid((context @ direction - beta) / tau)

    words, padding = [], []
    for start in range(0, len(unrelated), _BATCH):
        batch = unrelated[start : start + _BATCH]
        opened = gates(batch, {}) > OPEN
        for row, prompt in zip(opened, batch):
            end = backend.count_tokens(prompt) + 2
            words.append(row[:end])
            padding.append(row[end:])
    superclass_prompts, before = _framed(frames, concept.superclass)
    superclass = gates(superclass_prompts, {})
    at = [backend.count_tokens(f"{prefix} {concept.superclass}".strip()) for prefix in before]
    concept_prompts, _ = _framed(frames, concept.name)
    own = gates(concept_prompts, {concept.name: concept.embedding})
    concept_at = [backend.count_tokens(prefix) + 1 for prefix in before]
    rows = torch.arange(len(frames))
    padded = torch.cat(padding) if padding else torch.zeros(0)
    return GateSelectivity(
        off_concept_open=float(torch.cat(words).float().mean()) if words else 0.0,
        padding_open=float(padded.float().mean()) if padded.numel() else 0.0,
        superclass_gate=float(superclass[rows, at].mean()),
        concept_gate=float(own[rows, concept_at].mean()),
        beta=beta,
        tau=tau,
        prompts=len(unrelated),
    )
