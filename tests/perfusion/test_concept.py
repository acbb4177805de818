"""The concept file: round trip, size, refusals, atomic writes."""

from __future__ import annotations

import errno

import pytest
import torch
from safetensors.torch import save_file

from captinv import files
from captinv.errors import NameTakenError, OutputError
from captinv.perfusion.concept import PerfusionConcept
from captinv.perfusion.editing import applied
from captinv.perfusion.errors import ConceptFileError
from captinv.perfusion.layers import cross_attention_layers
from tests.perfusion import models


@pytest.fixture(scope="module")
def unet():
    return models.small_unet(torch.float32)


@pytest.fixture
def concept(unet):
    layers = cross_attention_layers(unet)
    made = models.random_concept(layers, seed=4, dtype=torch.float32)
    made.k_targets = {layers[2].name: torch.randn(layers[2].to_k.out_features)}
    made.metadata = {"arch": "sd1", "cov_id": "abc123", "steps": "400"}
    return made


def _context(concept) -> torch.Tensor:
    context = torch.randn(2, 5, models.CONTEXT, generator=torch.Generator().manual_seed(0))
    context[:, 2] = concept.i_star
    return context


def _output(unet, concept, context) -> torch.Tensor:
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), applied(unet, concept):
        return unet(sample, torch.tensor([3, 700]), encoder_hidden_states=context).sample


def test_round_trip_gives_identical_tensors_metadata_and_outputs(unet, concept, tmp_path):
    path = concept.save(tmp_path / "sks.safetensors")
    loaded = PerfusionConcept.load(path)
    for field in ("i_star", "c_inv_i_star", "i_super"):
        assert torch.equal(getattr(loaded, field), getattr(concept, field))
    for group in ("embedding", "v_targets", "k_targets"):
        ours, theirs = getattr(concept, group), getattr(loaded, group)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (loaded.name, loaded.superclass, loaded.beta, loaded.tau) == (
        "sks",
        "toy",
        concept.beta,
        concept.tau,
    )
    assert loaded.metadata == {"arch": "sd1", "cov_id": "abc123", "steps": "400"}
    _, raw = files.read_safetensors(path)
    assert (
        raw["format"] == "captinv.perfusion" and raw["version"] == "1" and raw["layer_naming"] == "diffusers"
    )
    context = _context(concept)
    assert torch.equal(_output(unet, loaded, context), _output(unet, concept, context))


@pytest.mark.parametrize(("family", "embedding", "limit"), [
    ("sd1", {"emb_params": torch.zeros(1, 768)}, 100_000),
    ("sdxl", {"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, 400_000),
])  # fmt: skip
def test_file_size_for_the_released_shapes(family, embedding, limit, tmp_path):
    layers = cross_attention_layers(models.real_unet(family))
    concept = models.random_concept(layers, seed=0, dtype=torch.float32, embedding=embedding)
    size = concept.size()
    assert size.values == 4 * sum(layer.to_v.out_features for layer in layers) and size.keys == 0
    path = concept.save(tmp_path / f"{family}.safetensors")
    header = 200 * (len(layers) + len(embedding) + 3)  # a JSON entry per tensor: name, dtype, shape, offsets
    assert size.total < path.stat().st_size < min(limit, size.total + header)
    assert f"{size.total / 1000:.1f} KB" in str(size)


def test_existing_files_are_kept_unless_overwriting_is_asked(concept, tmp_path):
    path = concept.save(tmp_path / "sks.safetensors")
    before = path.read_bytes()
    concept.beta = 0.55
    with pytest.raises(NameTakenError):
        concept.save(path)
    assert path.read_bytes() == before
    concept.save(path, overwrite=True)
    assert PerfusionConcept.load(path).beta == 0.55


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_temp_file(concept, tmp_path, monkeypatch):
    path = concept.save(tmp_path / "sks.safetensors")
    before = path.read_bytes()

    def crash(target, data):
        with open(target, "wb") as handle:
            handle.write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_write_new", crash)
    with pytest.raises(OutputError, match="No space left on device"):
        concept.save(tmp_path / "new.safetensors")
    with pytest.raises(OutputError, match="No space left on device"):
        concept.save(path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sks.safetensors"]
    assert path.read_bytes() == before


def test_foreign_damaged_and_newer_files_are_refused(concept, tmp_path):
    path = concept.save(tmp_path / "sks.safetensors")
    tensors, metadata = files.read_safetensors(path)
    variants = {
        "other format": (tensors, {**metadata, "format": "something.else"}),
        "newer": (tensors, {**metadata, "version": "99"}),
        "no i_super": ({k: v for k, v in tensors.items() if k != "i_super"}, metadata),
        "nan": ({**tensors, "i_star": torch.full_like(tensors["i_star"], float("nan"))}, metadata),
        "width": ({**tensors, "ci_star": tensors["ci_star"][:-1]}, metadata),
        "wrong context_dim": (tensors, {**metadata, "context_dim": "768"}),
    }
    for label, (variant, meta) in variants.items():
        bad = tmp_path / f"{label}.safetensors"
        save_file(variant, str(bad), metadata=meta)
        with pytest.raises(ConceptFileError):
            PerfusionConcept.load(bad)
    (tmp_path / "text.safetensors").write_text("not a tensor file")
    with pytest.raises(ConceptFileError, match="not a readable"):
        PerfusionConcept.load(tmp_path / "text.safetensors")
    with pytest.raises(ConceptFileError, match="No such"):
        PerfusionConcept.load(tmp_path / "absent.safetensors")


def test_a_concept_for_another_model_is_refused(unet, concept):
    with pytest.raises(ConceptFileError, match="12-wide"), applied(models.sdxl_like(torch.float32), concept):
        pass
    same_width = models.sd1_like(torch.float32, context_dim=2 * models.CONTEXT)
    other = models.random_concept(cross_attention_layers(same_width), seed=1, dtype=torch.float32)
    with (
        pytest.raises(ConceptFileError, match="another model family"),
        applied(models.sdxl_like(torch.float32), other),
    ):
        pass
    name = next(iter(concept.v_targets))
    concept.v_targets[name] = concept.v_targets[name][:-1]
    with pytest.raises(ConceptFileError, match="values, the model needs"):
        concept.check_fits(cross_attention_layers(unet))


def test_invalid_concepts_cannot_be_built(concept):
    fields = {**concept.__dict__, "k_targets": {}}
    with pytest.raises(ConceptFileError, match="canonical"):
        PerfusionConcept(
            **{**fields, "v_targets": {"input_blocks.1.1.transformer_blocks.0.attn2": torch.zeros(8)}}
        )
    with pytest.raises(ConceptFileError, match="τ > 0"):
        PerfusionConcept(**{**fields, "tau": 0.0})
    with pytest.raises(ConceptFileError, match="K targets for layers without"):
        PerfusionConcept(
            **{**fields, "k_targets": {"mid_block.attentions.9.transformer_blocks.0.attn2": torch.zeros(8)}}
        )
    with pytest.raises(ConceptFileError, match="same number of embedding rows"):
        PerfusionConcept(
            **{**fields, "embedding": {"clip_l": torch.zeros(1, 4), "clip_g": torch.zeros(2, 6)}}
        )
    with pytest.raises(ConceptFileError, match="not positive"):
        PerfusionConcept(**{**fields, "c_inv_i_star": -concept.i_star})
