"""Resource identifiers: a type prefix and 16 random lowercase alphanumerics."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits

PREFIXES = {
    "connection": "conn_",
    "embedding_provider": "emb_",
    "vector_table": "vt_",
    "task": "task_",
    "api_key": "key_",
    "environment": "env_",
    "org": "org_",
}


def new_id(kind: str) -> str:
    return PREFIXES[kind] + "".join(secrets.choice(_ALPHABET) for _ in range(16))


def new_api_key() -> str:
    """An API key secret: `sk_` and 40 random characters (~206 bits)."""
    return "sk_" + "".join(secrets.choice(_ALPHABET) for _ in range(40))
