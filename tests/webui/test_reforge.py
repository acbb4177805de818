"""What reForge does differently from A1111 under a run: its LoRA, its UNet blocks.

reForge's builtin Lora keeps the last generation's LoRA as patched clones of the UNet and CLIP
patchers, merged into the shared weights while loaded (A1111's Lora patches torch layers, which
its own tests cover): after a `<lora:...>` generation a run trains against the selected
checkpoint's own weights, the next generation has the LoRA again, and Perfusion's wrappers stack
with it. The LoRA is a real kohya-format file made for the loaded tiny checkpoint (shapes read
from the checkpoint file), strong enough to change an image. Gradient checkpointing wraps
reForge's own `ldm_patched` blocks and must not change what a run learns.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.webui.photo import chelsea_b64

PROMPT = "a photo of a tabby cat"
LORA = " <lora:tinylora:1>"
RANK = 4


def _lora_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """LoRA up/down/alpha for every UNet cross-attention projection and CLIP-L's first MLP layer,
    named as kohya's scripts name them (`lora_unet_<ldm path>`, `lora_te[1]_<HF path>`)."""
    generator = torch.Generator().manual_seed(7)
    weights = {}
    with safe_open(str(checkpoint), "pt") as source:
        for key in source.keys():
            if key.startswith("model.diffusion_model.") and ".attn2.to_" in key and key.endswith(".weight"):
                name = "lora_unet_" + key.removeprefix("model.diffusion_model.").removesuffix(".weight")
            elif key.endswith("transformer.text_model.encoder.layers.0.mlp.fc1.weight"):
                prefix = "lora_te1_" if key.startswith("conditioner.") else "lora_te_"
                name = prefix + "text_model.encoder.layers.0.mlp.fc1"
            else:
                continue
            out, inner = source.get_slice(key).get_shape()[:2]
            name = name.replace(".", "_")
            weights[f"{name}.lora_down.weight"] = torch.randn(RANK, inner, generator=generator) * 0.1
            weights[f"{name}.lora_up.weight"] = torch.randn(out, RANK, generator=generator) * 0.1
            weights[f"{name}.alpha"] = torch.tensor(float(RANK))
    assert len(weights) >= 3 * 9, sorted(weights)  # the UNet's K/V/Q/out layers and the text encoder's
    return weights


def _txt2img(server, prompt: str) -> bytes:
    status, body = server.call(
        "/sdapi/v1/txt2img",
        {"prompt": prompt, "steps": 2, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"},
    )
    assert status == 200, body
    return base64.b64decode(body["images"][0])


SHORT = {"caption": "a tabby cat", "steps": 2, "batch_size": 2, "resolution": 64}


def _reforge_only(server) -> None:
    if server.host.name != "reforge":
        pytest.skip("reForge's LoRA clones and ldm_patched blocks; A1111's have their own tests")


def _add_lora(server) -> None:
    """models/Lora/tinylora.safetensors for the loaded checkpoint (reForge finds it by name)."""
    checkpoint = Path(server.call("/sdapi/v1/sd-models")[1][0]["filename"])
    folder = server.data / "models" / "Lora"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_lora_weights(checkpoint), folder / "tinylora.safetensors")


def _invert(server, name: str, **options) -> dict[str, torch.Tensor]:
    """The combined embedding's vectors of a short run, as written."""
    body = SHORT | {"image": chelsea_b64(), "name": name}
    status, result = server.call("/captinv/v1/invert", body | options)
    assert status == 200, result
    return load_file(server.data / "embeddings" / f"{name}-all.safetensors")


def _metadata(server, name: str) -> dict[str, str]:
    with safe_open(str(server.data / "embeddings" / f"{name}-all.safetensors"), "pt") as file:
        return file.metadata()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_a_run_after_a_lora_generation_trains_against_the_base_weights(server):
    _reforge_only(server)
    _add_lora(server)
    stock = _txt2img(server, PROMPT)
    base = _invert(server, "lorabase")

    with_lora = _txt2img(server, PROMPT + LORA)
    assert with_lora != stock  # the LoRA changes what the model does

    assert _same(_invert(server, "loraafter"), base)  # the run did not see the LoRA
    assert "webui_networks" not in _metadata(server, "loraafter")
    assert _txt2img(server, PROMPT + LORA) == with_lora  # and the next generation has it again
    assert _txt2img(server, PROMPT) == stock

    _txt2img(server, PROMPT + LORA)
    kept = _invert(server, "lorakept", keep_active_networks=True)
    assert not _same(kept, base)  # kept on purpose, the LoRA does change the run
    assert _metadata(server, "lorakept")["webui_networks"] == "<lora:tinylora:1>"
    assert _txt2img(server, PROMPT + LORA) == with_lora
    assert _txt2img(server, PROMPT) == stock


def test_perfusion_stacks_with_a_lora_and_unwrapping_restores_it(server):
    _reforge_only(server)
    _add_lora(server)
    body = SHORT | {"image": chelsea_b64(), "name": "lorakitty", "covariance_prompts": 16}
    status, concept = server.call("/captinv/v1/perfusion", body)
    assert status == 200, concept
    prompt = f"a photo of a tabby {concept['name']}"
    lora = _txt2img(server, prompt + LORA)
    perfusion = _txt2img(server, f"{prompt} {concept['tag']}")

    both = _txt2img(server, f"{prompt}{LORA} {concept['tag']}")

    assert len({lora, perfusion, both, _txt2img(server, prompt)}) == 4
    assert _txt2img(server, prompt + LORA) == lora  # wrappers gone, the LoRA alone again


def test_gradient_checkpointing_learns_the_same_vectors(server):
    _reforge_only(server)
    plain = _invert(server, "plainrun")
    assert _same(_invert(server, "ckptrun", gradient_checkpointing=True), plain)
