"""The one place where user text becomes embedding names and file paths.

A1111 finds an embedding in a prompt by its token sequence, case-insensitively
(CLIP lower-cases). So names must be: safe as file names; distinct after
lower-casing; never a plain word (or every prompt with that word would pick the
embedding up); and never a token-prefix of one another, which would make which
embedding a prompt means depend on matching order. The scheme below guarantees
this among one run's names: the combined embedding is `<base>-all`, word i is
`<base>-wNN-<word>`; after the shared `<base>-` the next token is `all` or `w`,
and two-digit indices differ digit by digit. `check_available` enforces the
same rules against names that already exist.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path

from captinv.errors import InvalidNameError, NameTakenError, option

MAX_BASE_LENGTH = 40
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
_SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_WINDOWS_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(10)),
    *(f"lpt{i}" for i in range(10)),
}


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def base_name(text: str) -> str:
    """Turn a user's name (or a file stem) into a safe base name, or say why not."""
    slug = _slug(text)[:MAX_BASE_LENGTH].strip("-")
    if not slug:
        raise InvalidNameError(
            f"{text!r} has no letters or digits to make a name from; give a name such as 'my-cat' in "
            f"{option('name')}.",
            field="name",
        )
    if slug in _WINDOWS_RESERVED:
        slug = f"{slug}-1"
    return slug


def combined_name(base: str) -> str:
    return f"{base}-all"


def word_name(base: str, index: int, word: str) -> str:
    """Name of word `index` (1-based, at most 99) of the init text."""
    return f"{base}-w{index:02d}-{_slug(word)[:20] or 'x'}"


def is_token_prefix(shorter: list[int], longer: list[int]) -> bool:
    return len(shorter) <= len(longer) and longer[: len(shorter)] == shorter


def names_in_folder(folder: Path) -> set[str]:
    """Names of the embedding files anywhere under `folder`, as the WebUI would load them.

    Hidden files and folders (a run's staging folder among them) hold no embeddings yet.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return set()
    return {
        path.stem
        for path in folder.rglob("*")
        if path.suffix.lower() in EMBEDDING_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    }


def check_available(
    new: Iterable[str],
    existing: Iterable[str],
    tokenize: Callable[[str], list[int]] | None,
    *,
    overwrite: bool,
) -> None:
    """Refuse names that equal, or token-prefix, an existing embedding's name.

    With `overwrite`, an identical name is allowed (its file is replaced); a
    prefix clash is refused regardless, since replacing files cannot fix it.
    Without a tokenizer (before the model loads) only identical names are checked.
    """
    existing_tokens = {name.lower(): tokenize(name) if tokenize else [] for name in existing}
    for name in new:
        lowered = name.lower()
        if lowered in existing_tokens:
            if overwrite:
                continue
            raise NameTakenError(
                f"An embedding named '{name}' already exists. Choose another {option('name')}, or pass "
                f"{option('overwrite')} to replace it.",
                field="name",
            )
        if tokenize is None:
            continue
        tokens = tokenize(name)
        for other, other_tokens in existing_tokens.items():
            if is_token_prefix(tokens, other_tokens) or is_token_prefix(other_tokens, tokens):
                raise NameTakenError(
                    f"'{name}' and the existing embedding '{other}' would be confused in prompts "
                    f"(one's tokens start the other's). Choose another {option('name')}.",
                    field="name",
                )


def output_path(directory: Path, name: str, suffix: str) -> Path:
    """`directory/name+suffix`, refusing anything that would land outside `directory`."""
    if not _SAFE_NAME.fullmatch(name):
        raise InvalidNameError(f"'{name}' is not a safe file name (use letters, digits and '-').")
    root = directory.resolve()
    path = (root / f"{name}{suffix}").resolve()
    if path.parent != root:
        raise InvalidNameError(f"'{name}' would be written outside {root}.")
    return path
