"""The covariance corpus: the generated prompts, the user's captions, their mix and its id."""

from __future__ import annotations

import re

import pytest

from bench.perfusion.reference import old_corpus
from captinv.perfusion import corpus as corpus_module
from captinv.perfusion.corpus import (
    build_corpus,
    generated_prompts,
    held_out_prompts,
    plural,
    read_captions,
)
from captinv.perfusion.errors import CovarianceError


@pytest.fixture(scope="module")
def generated():
    return generated_prompts()


def _words(prompts) -> set[str]:
    return {word for prompt in prompts for word in re.findall(r"[a-z]+", prompt)}


def test_the_generated_corpus_is_distinct_reproducible_and_much_wider_than_before(generated):
    assert len(set(generated)) == len(generated) == corpus_module.DEFAULT_SIZE
    assert generated[:2000] == generated_prompts(2000) and generated[:100] != generated_prompts(100, seed=1)
    before = old_corpus(5000)
    assert len(_words(generated)) >= 4 * len(_words(before)) >= 4 * 150
    lengths = sorted(len(p.replace(",", " ").split()) for p in generated)
    assert lengths[0] == 1 and lengths[-1] >= 20
    # the three kinds of text: captions, alt texts, prompts with comma-separated tags
    assert any(p.startswith("there is ") for p in generated)
    assert any(p.endswith("isolated on white background") for p in generated)
    assert sum("," in p for p in generated) > len(generated) // 5


@pytest.mark.parametrize(
    ("noun", "plural_form"),
    [
        ("cat", "cats"),
        ("bus", "buses"),
        ("man", "men"),
        ("teddy bear", "teddy bears"),
        ("cherry", "cherries"),
    ],
)
def test_plurals(noun, plural_form):
    assert plural(noun) == plural_form


def test_captions_from_a_file_or_a_folder(tmp_path):
    listing = tmp_path / "captions.txt"
    listing.write_text("a red car\n\n  two dogs   on a beach \n")
    assert read_captions(listing) == ["a red car", "two dogs on a beach"]
    folder = tmp_path / "dataset"
    (folder / "10_cat").mkdir(parents=True)
    (folder / "10_cat" / "a.txt").write_text("a tabby cat,\nsitting")
    (folder / "b.TXT").write_text("a teapot")
    (folder / "c.png").write_bytes(b"not a caption")
    assert read_captions(folder) == ["a tabby cat, sitting", "a teapot"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(CovarianceError, match="holds no captions"):
        read_captions(tmp_path / "empty.txt")
    with pytest.raises(CovarianceError, match="No caption file"):
        read_captions(tmp_path / "missing.txt")


def test_captions_are_interleaved_at_the_front_and_name_the_corpus(generated):
    captions = [f"my caption {i}" for i in range(5)]
    mixed = build_corpus(captions)
    assert sorted(mixed.prompts[0:10:2]) == sorted(captions)
    assert mixed.prompts[1:10:2] == generated[:5] and mixed.prompts[10:] == generated[5:]
    plain = build_corpus()
    assert list(plain.prompts) == generated
    assert len({plain.corpus_id, mixed.corpus_id, build_corpus(captions[:4]).corpus_id}) == 3
    assert build_corpus(captions[::-1]) == mixed  # the same captions in another order: the same corpus


def test_held_out_prompts_avoid_the_corpus_and_the_given_words(generated):
    held_out = held_out_prompts(40, generated, ["cat", "Dog"])
    assert len(held_out) == 40 and not set(held_out) & set(generated)
    assert not any(re.search(r"\b(cat|dog)\b", p) for p in held_out)
