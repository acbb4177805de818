"""Perfusion concepts as users handle them: files copied and renamed, replaced outside the tab,
combined with a LoRA."""

from __future__ import annotations

import html
import shutil
import urllib.parse

from tests.webui.calls import perfusion, txt2img
from tests.webui.lora import make_lora


def _concepts(server):
    return server.data / "models" / "perfusion"


def _trained(server, name: str, caption: str = "a tabby cat", **options) -> None:
    status, answer = perfusion(server, name, caption, **options)
    assert status == 200, answer


def test_a_renamed_copy_is_a_concept_of_its_own_name(server):
    """The file name is the concept's identity, as for embeddings and Loras: the copy's card
    inserts its file name, and tag and concept word work under it."""
    _trained(server, "tigress")
    shutil.copy(_concepts(server) / "tigress.safetensors", _concepts(server) / "My Kitty 2.safetensors")
    query = urllib.parse.urlencode({"page": "perfusion", "tabname": "txt2img", "name": "My Kitty 2"})
    status, card = server.call(f"/sd_extra_networks/get-single-card?{query}")
    assert status == 200, card
    assert "<perfusion:My Kitty 2:0.7> My Kitty 2" in html.unescape(card["html"]), card["html"]
    original = txt2img(server, "a photo of a tabby tigress <perfusion:tigress:0.7>")
    # the same vectors under another name give the same conditioning: one concept word each
    assert txt2img(server, "a photo of a tabby My Kitty 2 <perfusion:My Kitty 2:0.7>") == original
    assert txt2img(server, "a photo of a tabby My Kitty 2") != original  # the word alone is no concept


def test_a_concept_replaced_on_disk_is_encoded_again(server):
    """Copying another concept over a file (or training again under its name) must reach the very
    next prompt, though the WebUI caches the conditioning of an identical prompt."""
    _trained(server, "first")
    _trained(server, "second", caption="a small cat", seed=3)
    prompt = "a photo of a tabby {0} <perfusion:{0}:0.7>"
    before = txt2img(server, prompt.format("first"))
    reference = txt2img(server, prompt.format("second"))
    assert before != reference
    shutil.copy(_concepts(server) / "second.safetensors", _concepts(server) / "first.safetensors")
    assert txt2img(server, prompt.format("first")) == reference


def test_perfusion_stacks_with_a_lora_in_either_order(server):
    _trained(server, "stacked")
    make_lora(server.checkpoint, server.data / "models" / "Lora" / "stacklora.safetensors")
    assert server.call("/sdapi/v1/refresh-loras", {})[0] == 200
    prompt = "a photo of a tabby stacked"
    lora_only = txt2img(server, f"{prompt} <lora:stacklora:1>")
    concept_only = txt2img(server, f"{prompt} <perfusion:stacked:0.7>")
    lora_first = txt2img(server, f"{prompt} <lora:stacklora:1> <perfusion:stacked:0.7>")
    concept_first = txt2img(server, f"{prompt} <perfusion:stacked:0.7> <lora:stacklora:1>")
    assert lora_first == concept_first
    assert len({lora_only, concept_only, lora_first}) == 3
    assert txt2img(server, f"{prompt} <perfusion:stacked:0.7>") == concept_only  # the LoRA left with its tag
