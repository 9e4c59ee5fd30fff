"""Scrubbing secrets out of text that came from outside: one function for every provider message.

Providers echo what they were sent: OpenAI's 401 quotes the key ("Incorrect API key provided:
sk-proj-..."), a proxy's error page may quote the Authorization header, a URL may carry
`?key=...` or `user:password@`. Such text is stored (task failures, `last_error`) and returned
(provider tests, query errors), readable with a read_only key, so it is scrubbed where it enters
(`providers.remote.RemoteEmbedder.embed`): of the secrets the caller knows (the record's own
key), and of anything shaped like a credential (docs/security.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[redacted]"
# Shorter "secrets" would mask ordinary words of a message.
_MIN_SECRET = 8

_SHAPES = (
    # OpenAI (sk-..., sk-proj-..., sk-svcacct-...), Anthropic (sk-ant-...), also when partly
    # masked by the provider itself (sk-proj-****abcd); this service's own keys (sk_...).
    re.compile(r"\bsk[-_][A-Za-z0-9_*-]{6,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"),  # Google API keys
    re.compile(r"\bpa-[A-Za-z0-9_-]{20,}"),  # Voyage AI keys
)
# A bearer token, a `key=` style query or form parameter, the user:password of a URL: the label
# stays, the value goes.
_LABELLED = (
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)([?&;\s](?:key|api[_-]?key|access[_-]?token|token|secret|password)=)[^&\s#\"']+"),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s@:]+:[^/\s@]*(?=@)"),
)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without the given secrets, and without anything that looks like a credential."""
    for secret in secrets:
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, MASK)
    for shape in _SHAPES:
        text = shape.sub(MASK, text)
    for labelled in _LABELLED:
        text = labelled.sub(lambda m: m.group(1) + MASK, text)
    return text
