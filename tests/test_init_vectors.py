import pytest
import torch

from captinv.config import InvertConfig
from captinv.errors import CaptionError
from captinv.init_vectors import plan_words, split_words

CAPTION = "a tabby cat's paw on the red t-shirt, sleeping"


def test_split_words_keeps_apostrophes_and_hyphens():
    assert split_words(CAPTION) == ["a", "tabby", "cat's", "paw", "on", "the", "red", "t-shirt", "sleeping"]


@pytest.mark.parametrize("backend_name", ["sd1", "sd2v", "sdxl"])
def test_initial_vectors_are_the_caption_token_rows(request, backend_name):
    backend = request.getfixturevalue(backend_name)
    plan = plan_words(backend, CAPTION, "x", InvertConfig(init="text", text=CAPTION))
    caption_ids = backend.tokenize(" ".join(split_words(CAPTION)))
    assert [i for word in plan.words for i in word.token_ids] == caption_ids
    assert plan.vector_count == len(caption_ids)
    for enc in backend.encoders:
        stacked = torch.cat([word.init[enc.key] for word in plan.words])
        assert torch.equal(stacked, backend.token_rows(caption_ids)[enc.key])
        assert stacked.shape[1] == enc.width
    assert {w.name for w in plan.trainable} == {
        f"x-w{i:02d}-{s}"
        for i, s in enumerate(["a", "tabby", "cat-s", "paw", "on", "the", "red", "t-shirt", "sleeping"], 1)
    }


def test_function_words_can_stay_plain(sd1):
    plan = plan_words(
        sd1, "a cat on the bed", "x", InvertConfig(init="text", text="a", train_function_words=False)
    )
    assert [w.text for w in plan.trainable] == ["cat", "bed"]
    assert plan.sentence() == "a x-w02-cat on the x-w05-bed"
    assert plan.output_names() == ["x-all", "x-w02-cat", "x-w05-bed"]


def test_more_vectors_than_tokens_repeat_the_token_rows(sd1):
    plan = plan_words(sd1, "sleeping", "x", InvertConfig(init="text", text="a", vectors_per_word=3))
    rows = sd1.token_rows(sd1.tokenize("sleeping"))["emb_params"]
    word = plan.words[0]
    assert word.vector_count == 3
    assert torch.equal(word.init["emb_params"], rows[torch.arange(3) % rows.shape[0]])


@pytest.mark.parametrize("backend_name", ["sd1", "sdxl"])
def test_one_vector_for_a_multi_token_word_starts_at_the_mean_of_its_pieces(request, backend_name):
    backend = request.getfixturevalue(backend_name)
    plan = plan_words(backend, "t-shirt", "x", InvertConfig(init="text", text="a", vectors_per_word=1))
    rows = backend.token_rows(backend.tokenize("t-shirt"))
    assert all(value.shape[0] == 3 for value in rows.values())  # t, -, shirt
    for key, value in rows.items():
        assert torch.allclose(plan.words[0].init[key], value.mean(dim=0, keepdim=True))


def test_fewer_vectors_than_tokens_average_runs_of_consecutive_tokens(sd1):
    plan = plan_words(sd1, "t-shirt", "x", InvertConfig(init="text", text="a", vectors_per_word=2))
    rows = sd1.token_rows(sd1.tokenize("t-shirt"))["emb_params"]
    expected = torch.stack([rows[:2].mean(dim=0), rows[2]])
    assert torch.allclose(plan.words[0].init["emb_params"], expected)


def test_empty_and_overlong_init_text_are_refused(sd1):
    config = InvertConfig(init="text", text="a")
    with pytest.raises(CaptionError, match="empty"):
        plan_words(sd1, " \n\t ", "x", config)
    with pytest.raises(CaptionError, match="at most 75"):
        plan_words(sd1, " ".join(["cat"] * 76), "x", config)
    with pytest.raises(CaptionError, match="function word"):
        plan_words(sd1, "a the on", "x", InvertConfig(init="text", text="a", train_function_words=False))
