"""Token estimates, truncation and request planning, without a tokenizer.

The providers count tokens with their own tokenizers (OpenAI's BPE, Gemini's SentencePiece,
Voyage's own). Shipping and running those costs more than it saves: a cheap estimate is good
enough to plan requests, because the embedder learns the real ratio from the `usage` field of
each response (see `limiter.TokenCalibration`) and a provider that still finds a request too
large answers 400, which splits it.

Rule: English and other ASCII text runs about 4 characters per token for every provider's
tokenizer; non-ASCII text is denser (CJK is about one token per character, i.e. per 3 UTF-8
bytes), so it is counted as UTF-8 bytes / 3. The rule errs on the high side for non-ASCII text.
"""

from __future__ import annotations

from collections.abc import Sequence

ASCII_CHARS_PER_TOKEN = 4
UTF8_BYTES_PER_TOKEN = 3


def estimate_tokens(text: str) -> int:
    """Estimated tokens of one text (at least 1)."""
    if text.isascii():
        return max(1, -(-len(text) // ASCII_CHARS_PER_TOKEN))
    return max(1, -(-len(text.encode()) // UTF8_BYTES_PER_TOKEN))


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` whose estimate fits `max_tokens` (the documented rule for
    OpenAI and Gemini, whose APIs reject an over-long input rather than cut it)."""
    if estimate_tokens(text) <= max_tokens:
        return text
    if text.isascii():
        return text[: max_tokens * ASCII_CHARS_PER_TOKEN]
    cut = text.encode()[: max_tokens * UTF8_BYTES_PER_TOKEN]
    return cut.decode(errors="ignore")  # drops a character split by the cut


def plan_batches(tokens: Sequence[int], max_inputs: int, max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) ranges, each within `max_inputs` inputs and `max_tokens`
    estimated tokens (a single input larger than `max_tokens` gets a range of its own)."""
    ranges: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, n in enumerate(tokens):
        if i > start and (i - start >= max_inputs or total + n > max_tokens):
            ranges.append((start, i))
            start, total = i, 0
        total += n
    if start < len(tokens):
        ranges.append((start, len(tokens)))
    return ranges
