"""Secrets at rest: AES-256-GCM with a key from the settings.

Ciphertext layout: version byte (1) | 12-byte nonce | ciphertext+tag. The row id is bound
as associated data, so a ciphertext copied onto another row does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from embedd_server.domain.credentials import PgCredentials, decode_credentials, encode_credentials
from embedd_server.domain.models import Connection

_VERSION = b"\x01"
_NONCE = 12


class SecretBoxError(Exception):
    """A secret could not be decrypted (wrong key or tampered data)."""


class SecretBox:
    """Encrypts and decrypts secrets bound to a resource id."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the secret key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        self._key = key

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for another use (e.g. signing cursors), derived with HKDF-SHA256 so
        that the encryption key itself is never used for anything else."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"embedd:{purpose}".encode())
        return hkdf.derive(self._key)

    def encrypt(self, plaintext: str, *, bound_to: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), bound_to.encode())

    def decrypt(self, blob: bytes, *, bound_to: str) -> str:
        if blob[:1] != _VERSION:
            raise SecretBoxError("unknown secret format")
        nonce, body = blob[1 : 1 + _NONCE], blob[1 + _NONCE :]
        try:
            return self._aead.decrypt(nonce, body, bound_to.encode()).decode()
        except InvalidTag as exc:
            raise SecretBoxError("secret does not decrypt with this key") from exc


def open_credentials(box: SecretBox, connection: Connection) -> PgCredentials:
    """A connection's credentials, decrypted - only where its database is actually reached."""
    return decode_credentials(box.decrypt(connection.credentials_enc, bound_to=connection.id))


def seal_credentials(box: SecretBox, connection_id: str, creds: PgCredentials) -> bytes:
    return box.encrypt(encode_credentials(creds), bound_to=connection_id)


def decode_key(text: str) -> bytes:
    """A base64 key as bytes, with a clear error for a malformed one."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as exc:
        raise ValueError("EMBEDD_SECRET_KEY must be base64") from exc
    if len(key) != 32:
        raise ValueError("EMBEDD_SECRET_KEY must decode to 32 bytes")
    return key


def load_or_create_key_file(path: Path) -> bytes:
    """The dev stack's key: read it, or create it (mode 0600) on first start."""
    if path.exists():
        return decode_key(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(key).decode() + "\n")
    return key
