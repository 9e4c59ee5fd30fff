"""Token estimates, truncation and request planning, without a tokenizer.

The providers count tokens with their own tokenizers (OpenAI's BPE, Gemini's SentencePiece,
Voyage's own). Shipping and running those costs more than it saves: a cheap estimate is good
enough to plan requests, because the embedder learns the real ratio from the `usage` field of
each response (see "Token calibration" in limiter.py) and a provider that still finds a request
too large answers 400 (or 413), which splits it; `InputLimit` learns a server's batch size.

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


class InputLimit:
    """How many inputs one request may carry, for a server that does not publish it.

    OpenAI-compatible servers each have their own maximum batch size (Text Embeddings Inference
    defaults to 32 and answers 413 above it; vLLM and Ollama take large batches). An unknown
    server starts at the API's maximum; a request refused as too large sets the limit to the
    maximum the server states ("maximum allowed batch size 32"), else to half the refused size
    (a single input too long is that input's problem). A lowered limit is what is
    worth remembering for the provider record (`learned`) and where the next process starts
    (`learned=True`: lowered further on refusal, never raised). A `fixed` limit (the user's
    setting, or the provider's documented maximum) never changes: a refused request is only
    split.
    """

    def __init__(self, start: int, ceiling: int, *, fixed: bool = False, learned: bool = False) -> None:
        self.value = max(1, min(start, ceiling))
        self._fixed = fixed
        self._lowered = learned

    @property
    def learned(self) -> int | None:
        """The limit worth remembering: None until a refusal lowered it, or when fixed."""
        return self.value if self._lowered and not self._fixed else None

    def on_too_large(self, count: int, stated: int | None = None) -> None:
        """A request of `count` inputs was refused as too large; `stated` is the maximum the
        server's message gave, if any."""
        if self._fixed or count <= 1 or count > self.value:
            return  # fixed; one input too long; or planned before the limit was lowered
        self.value = max(1, stated if stated is not None and stated < count else count // 2)
        self._lowered = True
