import pytest

from captinv import names
from captinv.errors import InvalidNameError, NameTakenError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Chelsea", "chelsea"),
        ("my cat (2).JPG", "my-cat-2-jpg"),
        ("../../etc/passwd", "etc-passwd"),
        ("C:\\Users\\x", "c-users-x"),
        ("Ünïcödé  dog", "unicode-dog"),
        ("con", "con-1"),
    ],
)
def test_base_name_is_a_safe_slug(text, expected):
    assert names.base_name(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "../..", "日本"])
def test_base_name_without_letters_is_refused(text):
    with pytest.raises(InvalidNameError, match="no letters or digits"):
        names.base_name(text)


def test_run_names_are_never_token_prefixes_of_each_other(sd1):
    """The A1111 matching rule: no name's tokens may start another's (checked with the real tokenizer)."""
    for base in ("chelsea", "cat", "my-dog-2", "x9"):
        run = [names.combined_name(base)] + [
            names.word_name(base, i, w) for i, w in enumerate(["a", "cat", "a"], 1)
        ]
        assert len({n.lower() for n in run}) == len(run)
        tokens = [sd1.tokenize(n) for n in run]
        for i, first in enumerate(tokens):
            for j, second in enumerate(tokens):
                if i != j:
                    assert not names.is_token_prefix(first, second), (run[i], run[j])
        # never a plain word: every name is several tokens
        assert all(len(t) > 1 for t in tokens)


def test_check_available_refuses_equal_and_prefix_names(sd1):
    with pytest.raises(NameTakenError, match="already exists"):
        names.check_available(["cat-all"], ["CAT-ALL"], sd1.tokenize, overwrite=False)
    names.check_available(["cat-all"], ["cat-all"], sd1.tokenize, overwrite=True)
    with pytest.raises(NameTakenError, match="confused"):
        names.check_available(["cat-all-w01-x"], ["cat-all"], sd1.tokenize, overwrite=True)
    names.check_available(["cat-all"], ["dog-all", "caterpillar"], sd1.tokenize, overwrite=False)


def test_output_path_stays_inside_the_folder(tmp_path):
    assert (
        names.output_path(tmp_path, "cat-all", ".safetensors") == tmp_path.resolve() / "cat-all.safetensors"
    )
    for bad in ("../cat", "a/b", "..", "Cat", ""):
        with pytest.raises(InvalidNameError):
            names.output_path(tmp_path, bad, ".safetensors")
