"""The whole run through the public entry point: files, interop, bad input, interrupt."""

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from captinv.backends.diffusers_backend import DiffusersBackend
from captinv.embedding_io import check_layout, read_embedding
from captinv.errors import CaptionError, ImageError, Interrupted, NameTakenError
from captinv.images import load_image
from captinv.inversion import default_base, invert
from captinv.latents import build_latent_cache
from captinv.trainer import Callbacks
from tests import factories
from tests.helpers import CAPTION, text_config


def _widths(backend):
    return {enc.key: enc.width for enc in backend.encoders}


@pytest.mark.parametrize("backend_name", ["sd1", "sd2v", "sdxl"])
def test_invert_writes_loadable_per_word_and_combined_files(request, backend_name, chelsea, tmp_path):
    backend = request.getfixturevalue(backend_name)
    result = invert(backend, [chelsea], CAPTION, text_config(), tmp_path, base="chelsea")

    assert [p.name for p in result.files] == [
        "chelsea-all.safetensors",
        *(f"chelsea-w{i:02d}-{w}.safetensors" for i, w in enumerate(CAPTION.split(), 1)),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in result.files)  # no temp files
    combined = read_embedding(tmp_path / "chelsea-all.safetensors")
    words = [read_embedding(p) for p in result.files[1:]]
    for key in combined.vectors:
        assert torch.equal(combined.vectors[key], torch.cat([w.vectors[key] for w in words]))
    for item in [combined, *words]:
        check_layout(
            item.vectors, _widths(backend)
        )  # the WebUI's rule: one tensor or exactly clip_l + clip_g
        assert item.metadata["caption"] == CAPTION and item.metadata["model_family"] == backend.family
    with safe_open(str(result.files[0]), "pt") as handle:
        assert set(handle.keys()) == ({"clip_l", "clip_g"} if backend.family == "sdxl" else {"emb_params"})


def test_sd1_files_load_in_diffusers_textual_inversion(chelsea, tmp_path):
    pipe = factories.sd_pipeline(tmp_path)
    ours = DiffusersBackend(factories.sd_pipeline(tmp_path))
    result = invert(ours, [chelsea], CAPTION, text_config(), tmp_path / "out", base="chelsea")
    prompt = "a photo of chelsea-all in the snow"

    pipe.load_textual_inversion(str(result.files[0]), token="chelsea-all")
    theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, False)

    embeddings = {p.stem: read_embedding(p).vectors for p in result.files}
    assert torch.allclose(theirs, ours.conditioning([prompt], embeddings), atol=1e-6)


def test_sdxl_files_load_in_diffusers_with_both_keys(chelsea, tmp_path):
    pipe: StableDiffusionXLPipeline = factories.sdxl_pipeline(tmp_path)
    ours = DiffusersBackend(factories.sdxl_pipeline(tmp_path))
    result = invert(ours, [chelsea], CAPTION, text_config(), tmp_path / "out", base="chelsea")
    state = load_file(result.files[0])
    pipe.load_textual_inversion(
        state["clip_l"], token="chelsea-all", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        state["clip_g"], token="chelsea-all", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    prompt = "a photo of chelsea-all"
    hidden, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)

    cond = ours.conditioning([prompt], {"chelsea-all": read_embedding(result.files[0]).vectors})
    assert torch.allclose(hidden, cond.hidden, atol=1e-6) and torch.allclose(pooled, cond.pooled, atol=1e-6)


def test_webui_pt_layout_reads_back(tmp_path):
    vec = torch.randn(3, 32)
    torch.save(
        {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "x", "step": 5},
        tmp_path / "x.pt",
    )
    item = read_embedding(tmp_path / "x.pt")
    assert torch.equal(item.vectors["emb_params"], vec) and item.metadata["step"] == "5"


def test_interrupt_stops_within_a_step_and_writes_nothing(sd1, chelsea, tmp_path):
    steps = []
    callbacks = Callbacks(progress=steps.append, should_stop=lambda: len(steps) >= 2)
    with pytest.raises(Interrupted, match="step 2 of 50; nothing was written"):
        invert(sd1, [chelsea], CAPTION, text_config(steps=50), tmp_path, base="chelsea", callbacks=callbacks)
    assert len(steps) == 2
    assert list(tmp_path.iterdir()) == []


def test_stop_and_save_writes_the_vectors_reached_and_says_how_many_steps(sd1, chelsea, tmp_path):
    steps = []
    callbacks = Callbacks(
        progress=steps.append, should_stop=lambda: len(steps) >= 3, save_on_stop=lambda: True
    )
    result = invert(
        sd1, [chelsea], CAPTION, text_config(steps=50), tmp_path, base="chelsea", callbacks=callbacks
    )
    assert (result.steps, result.max_steps, result.stop_reason) == (3, 50, "stopped")
    assert "stopped at step 3 of 50 on request" in result.stop_summary()
    combined = read_embedding(tmp_path / "chelsea-all.safetensors")
    assert combined.metadata["steps"] == "3" and combined.metadata["stop_reason"] == "stopped"
    assert len(result.files) == 1 + len(result.word_names)  # the whole set, loadable
    for path in result.files:
        assert read_embedding(path).vectors


def test_taken_name_is_refused_before_training_and_leaves_files_alone(sd1, chelsea, tmp_path):
    existing = tmp_path / "chelsea-w02-tabby.safetensors"
    existing.write_bytes(b"user's own embedding")
    trained = []
    with pytest.raises(NameTakenError, match="chelsea-w02-tabby"):
        invert(
            sd1,
            [chelsea],
            CAPTION,
            text_config(),
            tmp_path,
            base="chelsea",
            callbacks=Callbacks(progress=trained.append),
        )
    assert trained == []  # refused before any step ran
    assert existing.read_bytes() == b"user's own embedding"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chelsea-w02-tabby.safetensors"]


def test_overwrite_replaces_own_files_when_asked(sd1, chelsea, tmp_path):
    first = invert(sd1, [chelsea], "tabby cat", text_config(seed=1), tmp_path, base="chelsea")
    old = first.files[0].read_bytes()
    invert(sd1, [chelsea], "tabby cat", text_config(seed=2, overwrite=True), tmp_path, base="chelsea")
    assert first.files[0].read_bytes() != old


def test_name_with_path_characters_lands_inside_the_folder(sd1, chelsea, tmp_path):
    out = tmp_path / "embeddings"
    config = text_config(name="../../escape me/..")
    result = invert(sd1, [chelsea], "cat", config, out, base=default_base(config, None))
    assert result.base == "escape-me"
    assert all(path.parent == out.resolve() for path in result.files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings"]


def test_bad_images_give_clear_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="broken.png is not an image file"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="No image"):
        load_image(None)
    from PIL import Image

    with pytest.raises(ImageError, match="at least 64"):
        load_image(Image.new("RGB", (32, 200)))


def test_bad_init_text_is_refused_before_training(sd1, chelsea, tmp_path):
    for empty in ("  ", ""):
        with pytest.raises(CaptionError, match="empty"):
            invert(sd1, [chelsea], empty, text_config(), tmp_path, base="x")
    with pytest.raises(CaptionError, match="at most 75"):
        invert(sd1, [chelsea], "cat " * 80, text_config(), tmp_path, base="x")
    assert list(tmp_path.iterdir()) == []


def test_several_images_train_together(sd1, chelsea, tmp_path):
    from PIL import Image
    from skimage import data

    images = [chelsea, Image.fromarray(data.coffee()), Image.fromarray(data.astronaut())]
    result = invert(sd1, images, "*", text_config(steps=2), tmp_path, base="multi")
    assert result.word_names == ["multi-w01-x"]
    assert read_embedding(result.files[1]).vector_count == 1  # '*' is one token
    latents = build_latent_cache(sd1, images, 32, flip=True, random_crops=1, generator=torch.Generator())
    assert latents.shape == (3 * 2 * 2, 4, 16, 16)  # images x (centre + 1 crop) x (plain, mirrored)
