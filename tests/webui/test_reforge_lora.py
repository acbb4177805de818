"""reForge's LoRA and a run: after a `<lora:...>` generation, a run trains against the selected
checkpoint's own weights, and the next generation has the LoRA again.

reForge's builtin Lora keeps the last generation's LoRA as patched clones of the UNet and CLIP
patchers, merged into the shared weights while loaded; A1111's Lora works differently (torch
layer patches), which its own tests cover. The LoRA here is a real kohya-format file made for the
loaded tiny checkpoint (shapes read from the checkpoint file), strong enough to change an image.
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


def _invert(server, name: str, **options) -> dict[str, torch.Tensor]:
    """The combined embedding's vectors of a short run, as written."""
    body = {"image": chelsea_b64(), "caption": "a tabby cat", "name": name, "steps": 2, "resolution": 64}
    status, result = server.call("/captinv/v1/invert", body | options)
    assert status == 200, result
    return load_file(server.data / "embeddings" / f"{name}-all.safetensors")


def _metadata(server, name: str) -> dict[str, str]:
    with safe_open(str(server.data / "embeddings" / f"{name}-all.safetensors"), "pt") as file:
        return file.metadata()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_a_run_after_a_lora_generation_trains_against_the_base_weights(server):
    if server.host.name != "reforge":
        pytest.skip("reForge's patcher-clone LoRA; A1111's Lora is covered by its own tests")
    checkpoint = Path(server.call("/sdapi/v1/sd-models")[1][0]["filename"])
    folder = server.data / "models" / "Lora"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_lora_weights(checkpoint), folder / "tinylora.safetensors")
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
