"""Gate selectivity, measured through a real text path and recomputed independently."""

from __future__ import annotations

import json

import torch

from captinv.perfusion.concept import PerfusionConcept
from captinv.perfusion.layers import cross_attention_layers
from captinv.perfusion.selectivity import FRAMES, OPEN, GateSelectivity, gate_selectivity

UNRELATED = ["a red car parked on the street", "two dogs playing in the snow, oil painting", "a cat on a mat"]


def _concept(backend) -> PerfusionConcept:
    """A concept whose i* is the encoding of 'cat' in 'a photo of the cat' (C = identity)."""
    with torch.no_grad():
        context = backend.context(backend.conditioning(["a photo of the cat"], {}))[0].float()
    i_star = context[backend.count_tokens("a photo of the cat")]
    layers = cross_attention_layers(backend.denoiser())
    return PerfusionConcept(
        name="kitty",
        superclass="cat",
        embedding={"emb_params": backend.token_rows(backend.tokenize("cat"))["emb_params"]},
        i_star=i_star,
        c_inv_i_star=i_star.clone(),
        i_super=i_star.clone(),
        v_targets={layer.name: torch.zeros(layer.to_v.out_features) for layer in layers},
        beta=0.6,
        tau=0.15,
    )


def test_the_numbers_are_those_of_the_gate_at_each_position(sd1):
    concept = _concept(sd1)
    measured = gate_selectivity(sd1, concept, UNRELATED)
    u = concept.i_star / concept.i_star.dot(concept.i_star)

    def gates(prompts, embeddings=None) -> torch.Tensor:
        with torch.no_grad():
            context = sd1.context(sd1.conditioning(prompts, embeddings or {})).float()
        return torch.sigmoid((context @ u - 0.6) / 0.15)

    kept = UNRELATED[:2]  # the third names the superclass
    opened = gates(kept) > OPEN
    lengths = [sd1.count_tokens(p) + 2 for p in kept]
    words = torch.cat([row[:n] for row, n in zip(opened, lengths)]).float().mean()
    padding = torch.cat([row[n:] for row, n in zip(opened, lengths)]).float().mean()
    superclass = gates([f.format("cat") for f in FRAMES])
    at = [sd1.count_tokens(f.split("{}")[0] + "cat") for f in FRAMES]
    own = gates([f.format("kitty") for f in FRAMES], {"kitty": concept.embedding})
    concept_at = [sd1.count_tokens(f.split("{}")[0]) + 1 for f in FRAMES]
    rows = torch.arange(len(FRAMES))
    assert measured.prompts == 2
    assert (
        abs(measured.off_concept_open - float(words)) < 1e-9
        and abs(measured.padding_open - float(padding)) < 1e-9
    )
    assert abs(measured.superclass_gate - float(superclass[rows, at].mean())) < 1e-6
    assert abs(measured.concept_gate - float(own[rows, concept_at].mean())) < 1e-6
    assert measured.superclass_gate > 0.5  # i* is the superclass's own encoding in the first frame
    assert gate_selectivity(sd1, concept, UNRELATED, beta=0.2).off_concept_open >= measured.off_concept_open


def test_the_record_round_trips_and_reads_as_one_line(sd1):
    measured = gate_selectivity(sd1, _concept(sd1))
    assert measured.prompts >= 25  # generated held-out prompts, those naming 'cat' or 'kitty' left out
    stored = json.loads(measured.to_metadata()["gate_selectivity"])
    assert GateSelectivity(**stored).to_dict() == measured.to_dict()
    line = str(measured)
    assert "\n" not in line and "unrelated tokens" in line and "β 0.6" in line
