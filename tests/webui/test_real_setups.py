"""The WebUI as users leave it between runs: a LoRA still merged from the last picture."""

from __future__ import annotations

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.webui.calls import invert, run_folder, txt2img
from tests.webui.lora import make_lora


def _losses(server, name: str, **options) -> list[float]:
    status, result = invert(server, name, steps=3, seed=5, **options)
    assert status == 200, result
    return result["losses"]


def test_a_run_after_a_lora_generation_trains_against_the_checkpoint(server):
    make_lora(server.checkpoint, server.data / "models" / "Lora" / "tinylora.safetensors")
    assert server.call("/sdapi/v1/refresh-loras", {})[0] == 200
    prompt = "a photo of a tabby cat"
    clean = _losses(server, "lora-clean")  # no LoRA has ever been applied
    stock = txt2img(server, prompt)
    with_lora = txt2img(server, f"{prompt} <lora:tinylora:1>")
    assert with_lora != stock  # the LoRA changes the model, and stays merged after this generation

    assert _losses(server, "lora-after") == clean  # trained against the checkpoint's own weights
    # (that run's preview, a generation without the tag, unloaded the LoRA, as any such generation does)
    assert txt2img(server, f"{prompt} <lora:tinylora:1>") == with_lora
    kept = _losses(server, "lora-kept", keep_active_networks=True)
    assert kept != clean  # asked for: on top of the LoRA, and the files say so
    with safe_open(str(run_folder(server, "lora-kept") / "lora-kept-all.safetensors"), "pt") as handle:
        assert handle.metadata()["webui_networks"] == "<lora:tinylora:1>"

    # the LoRA state is as the generation left it: with the tag and without, the same images as before
    assert txt2img(server, f"{prompt} <lora:tinylora:1>") == with_lora
    assert txt2img(server, prompt) == stock


def _vectors(server, name: str, **options) -> dict[str, torch.Tensor]:
    status, result = invert(server, name, steps=2, seed=5, **options)
    assert status == 200, result
    return load_file(str(run_folder(server, name) / f"{name}-all.safetensors"))


def test_gradient_checkpointing_learns_the_same_vectors(server):
    """Each host recomputes its own UNet blocks (A1111's ldm/sgm, reForge's ldm_patched, Forge's
    backend): the memory saving must not change what a run learns."""
    plain = _vectors(server, "plainrun")
    checkpointed = _vectors(server, "ckptrun", gradient_checkpointing=True)
    assert plain.keys() == checkpointed.keys()
    assert all(torch.equal(plain[key], checkpointed[key]) for key in plain)
