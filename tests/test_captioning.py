"""Init sources with tiny real BLIP and ViT classifiers saved to and loaded from disk."""

import pytest
import torch
from transformers import (
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from captinv.captioning import SIDECAR_MAX_BYTES, BlipCaptioner, ImageClassifier, PlainText, init_source
from captinv.config import InvertConfig
from captinv.errors import CaptionError, ModelLoadError, cli_flag
from tests.factories import tiny_blip


def test_blip_caption_is_decoded_without_special_tokens(tmp_path, chelsea):
    path = tiny_blip(tmp_path, "cat")
    captioner = BlipCaptioner(path, beams=2, max_new_tokens=4)
    assert captioner.describe([chelsea]) == "cat cat cat cat"


def test_blip_empty_caption_asks_for_text(tmp_path, chelsea):
    with pytest.raises(CaptionError, match="type the init text"):
        BlipCaptioner(tiny_blip(tmp_path, "[SEP]"), max_new_tokens=4).describe([chelsea])


def test_classifier_uses_the_first_synonym_of_the_top_label(tmp_path, chelsea):
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        id2label={0: "golden retriever", 1: "tabby, tabby_cat", 2: "coffee mug"},
    )
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 1e4, 0.0]))
    model.save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    assert ImageClassifier(str(tmp_path)).describe([chelsea]) == "tabby"


def test_missing_model_is_a_clear_error(tmp_path, chelsea, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="captioner '.*nowhere' was not found"):
        BlipCaptioner(str(tmp_path / "nowhere")).describe([chelsea])


def test_a_model_id_not_downloaded_while_offline_is_refused_at_once(tmp_path, monkeypatch):
    """Before: transformers retried the hub for minutes, with a warning per retry, then failed."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for config, what in ((InvertConfig(), "captioner"), (InvertConfig(init="classify"), "classifier")):
        with pytest.raises(
            ModelLoadError, match=f"{what} .* is not downloaded and offline mode is set"
        ) as err:
            init_source(config)
        assert f"folder with --{what}, or write the" in err.value.render(cli_flag)
        assert f"folder with {what}, or write the" in str(err.value)


def test_source_selection(tmp_path):
    local = {"captioner": str(tmp_path), "classifier": str(tmp_path)}  # a local model is always there
    assert isinstance(init_source(InvertConfig(**local)), BlipCaptioner)
    assert isinstance(init_source(InvertConfig(init="classify", **local)), ImageClassifier)
    # an edited caption wins over any model
    assert init_source(InvertConfig(init="caption", text="my cat")).describe([]) == "my cat"
    assert isinstance(init_source(InvertConfig(init="text", text="*")), PlainText)


def test_caption_file_beside_the_image_is_the_caption_unless_text_is_typed(tmp_path, chelsea):
    image = tmp_path / "chelsea.png"
    chelsea.save(image)
    local = {"captioner": str(tmp_path), "classifier": str(tmp_path)}
    assert isinstance(init_source(InvertConfig(**local), first_image=image), BlipCaptioner)
    (tmp_path / "chelsea.txt").write_text("a tabby cat on a table\n", encoding="utf-8")
    assert init_source(InvertConfig(), first_image=image).describe([chelsea]) == "a tabby cat on a table"
    assert init_source(InvertConfig(text="my cat"), first_image=image).describe([chelsea]) == "my cat"
    # a classifier was asked for, so the caption file is not a substitute for it
    assert isinstance(init_source(InvertConfig(init="classify", **local), first_image=image), ImageClassifier)


def test_a_large_or_empty_caption_file_is_not_a_caption(tmp_path, chelsea):
    image = tmp_path / "chelsea.png"
    (tmp_path / "chelsea.txt").write_text("x" * (SIDECAR_MAX_BYTES + 1), encoding="utf-8")
    assert isinstance(init_source(InvertConfig(captioner=str(tmp_path)), first_image=image), BlipCaptioner)
    (tmp_path / "chelsea.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(CaptionError, match="caption file chelsea.txt is empty"):
        init_source(InvertConfig(), first_image=image)
