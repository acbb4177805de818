"""A real CLIP tokenizer without a download.

Stable Diffusion's text encoders all use OpenAI's CLIP BPE vocabulary. The
`open_clip_torch` package ships it as `bpe_simple_vocab_16e6.txt.gz`; this
module turns that file into the `vocab.json`/`merges.txt` pair that
transformers' `CLIPTokenizer` reads, so tests, the mini world and offline
set-ups get the exact tokenizer the real models use. The package itself is
never imported: it pulls in torchvision, which does not import beside the CPU
torch wheel.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from captinv.errors import ModelLoadError

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI's tokenizer keeps the first 49152 - 256 - 2 merges of the file.
_MERGE_COUNT = 49152 - 256 - 2


def bundled_bpe_path() -> Path:
    """Where open_clip_torch keeps the BPE file, found without importing it."""
    spec = importlib.util.find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / BPE_FILENAME
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"{BPE_FILENAME} not found: install it with 'pip install --no-deps open_clip_torch'."
    )


def _bytes_to_unicode() -> dict[int, str]:
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


@lru_cache(maxsize=4)
def _vocab_and_merges(bpe_path: str) -> tuple[dict[str, int], list[str]]:
    with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
        merges = handle.read().split("\n")[1 : _MERGE_COUNT + 1]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_clip_tokenizer_files(directory: Path, bpe_path: Path | None = None) -> Path:
    """Write `vocab.json` and `merges.txt` for `CLIPTokenizer.from_pretrained(directory)`."""
    vocab, merges = _vocab_and_merges(str(bpe_path or bundled_bpe_path()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory


def clip_tokenizer(directory: Path, *, pad_token: str = "<|endoftext|>"):
    """A transformers `CLIPTokenizer` over the bundled vocabulary.

    `pad_token` is "<|endoftext|>" for SD1's CLIP-L and "!" for the OpenCLIP
    encoders of SD2 and SDXL, as in the released models.
    """
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(directory)
    return CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), pad_token=pad_token, model_max_length=77
    )
