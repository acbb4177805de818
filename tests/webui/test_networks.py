"""captinv beside the WebUI's own LoRA: a run trains against the selected checkpoint even when the
last generation left a LoRA merged, and the Perfusion tag stacks with a LoRA in one generation."""

from __future__ import annotations

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.webui.test_extension import _invert, _perfusion, _txt2img

LORA = "tinylora"


def _checkpoint(server) -> str:
    status, models = server.call("/sdapi/v1/sd-models")
    assert status == 200 and models, models
    return models[0]["filename"]


def _make_lora(server) -> None:
    """A rank-2 LoRA on every cross-attention K/V projection of the loaded checkpoint, in the
    kohya naming (`lora_unet_<ldm path>`) all three WebUIs read."""
    tensors = {}
    generator = torch.Generator().manual_seed(5)
    with safe_open(_checkpoint(server), "pt") as checkpoint:
        for key in checkpoint.keys():
            if not key.endswith((".attn2.to_k.weight", ".attn2.to_v.weight")):
                continue
            out_features, in_features = checkpoint.get_slice(key).get_shape()
            name = "lora_unet_" + key.removeprefix("model.diffusion_model.").removesuffix(".weight").replace(
                ".", "_"
            )
            tensors[f"{name}.lora_down.weight"] = torch.randn(2, in_features, generator=generator) * 0.5
            tensors[f"{name}.lora_up.weight"] = torch.randn(out_features, 2, generator=generator) * 0.5
            tensors[f"{name}.alpha"] = torch.tensor(2.0)
    assert tensors, "the checkpoint has no cross-attention layers"
    folder = server.data / "models" / "Lora"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / f"{LORA}.safetensors"))


def _vectors(server, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(server.data / "embeddings" / f"{name}.safetensors"))


def test_a_run_trains_against_the_checkpoint_not_the_last_generations_lora(server):
    _make_lora(server)
    prompt = "a photo of a cat"
    assert _txt2img(server, f"{prompt} <lora:{LORA}:1>") != _txt2img(server, prompt)  # the LoRA applies

    _txt2img(server, f"{prompt} <lora:{LORA}:1>")  # the WebUI keeps it merged after this
    status, after_lora = _invert(server, "afterlora", steps=2)
    assert status == 200, after_lora
    _txt2img(server, prompt)
    status, plain = _invert(server, "plain", steps=2)
    assert status == 200, plain

    first, second = _vectors(server, "afterlora-all"), _vectors(server, "plain-all")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    # and the LoRA is back for the next generation that asks for it
    assert _txt2img(server, f"{prompt} <lora:{LORA}:1>") != _txt2img(server, prompt)


def test_a_perfusion_tag_stacks_with_a_lora(server):
    _make_lora(server)
    status, concept = _perfusion(server, "stacked", "a cat")
    assert status == 200, concept
    prompt = "a photo of a stacked"
    lora = f"<lora:{LORA}:1>"
    lora_only = _txt2img(server, f"{prompt} {lora}")
    tag_only = _txt2img(server, f"{prompt} {concept['tag']}")
    both = _txt2img(server, f"{prompt} {lora} {concept['tag']}")
    assert len({lora_only, tag_only, both}) == 3
    assert _txt2img(server, f"{prompt} {lora}") == lora_only  # the tag's edits are gone, the LoRA stays
