"""The WebUI's 75-token prompt chunks, for the headless text encoders.

The WebUI does not cut a long prompt at 77 tokens: it splits it into chunks of
75, encodes each between its own BOS and EOS and concatenates the encodings,
so the UNet reads [B, 77·k, C] (`modules/sd_hijack_clip.py`, `tokenize_line`).
An embedding that does not fit in the current chunk moves whole to the next
one, and text after a comma near the end of a full chunk moves with it. An
embedding trained headless must meet the same layout it will meet in the
WebUI, so the headless backend plans prompts with this same rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from captinv.errors import CaptionError

CHUNK_TOKENS = 75  # 77 positions less BOS and EOS
COMMA_BACKTRACK = 20  # the WebUI's default "comma padding backtrack" (Settings > Stable Diffusion)

Item = int | tuple[str, int]
"""A token id, or an embedding as (name, number of vectors)."""


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)  # at most CHUNK_TOKENS; embeddings as placeholders
    slots: list[tuple[int, str]] = field(default_factory=list)  # (offset in tokens, embedding name)

    def split(self, at: int) -> Chunk:
        """Keep tokens before `at`; return the rest (with its embeddings) as a new chunk."""
        rest = Chunk(self.tokens[at:], [(offset - at, name) for offset, name in self.slots if offset >= at])
        self.tokens = self.tokens[:at]
        self.slots = [(offset, name) for offset, name in self.slots if offset < at]
        return rest


def chunk_prompt(items: Iterable[Item], comma: int, placeholder: int) -> list[Chunk]:
    """Chunks of one prompt, as `tokenize_line` builds them (emphasis and BREAK aside)."""
    chunks: list[Chunk] = []
    chunk = Chunk()
    last_comma = -1
    for item in items:
        if item == comma:
            last_comma = len(chunk.tokens)
        elif (
            len(chunk.tokens) == CHUNK_TOKENS
            and last_comma != -1
            and CHUNK_TOKENS - last_comma <= COMMA_BACKTRACK
        ):
            rest = chunk.split(last_comma + 1)
            chunks.append(chunk)
            chunk, last_comma = rest, -1
        if len(chunk.tokens) == CHUNK_TOKENS:
            chunks.append(chunk)
            chunk, last_comma = Chunk(), -1
        if isinstance(item, int):
            chunk.tokens.append(item)
            continue
        name, count = item
        if count > CHUNK_TOKENS:
            raise CaptionError(
                f"The embedding '{name}' has {count} vectors; a prompt chunk holds {CHUNK_TOKENS}."
            )
        if len(chunk.tokens) + count > CHUNK_TOKENS:
            chunks.append(chunk)
            chunk, last_comma = Chunk(), -1
        chunk.slots.append((len(chunk.tokens), name))
        chunk.tokens += [placeholder] * count
    if chunk.tokens or not chunks:
        chunks.append(chunk)
    return chunks
