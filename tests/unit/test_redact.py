"""Provider messages are scrubbed of keys and of anything shaped like one (domain/redact.py)."""

from __future__ import annotations

import pytest
from embedd_server.domain.redact import MASK, scrub

KEY = "sk-proj-" + "Ab3" * 20


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        (f"Incorrect API key provided: {KEY}. You can find your key", KEY),
        ("Incorrect API key provided: sk-proj-****************abcd.", "abcd"),
        ("key sk-ant-api03-AAAAAAAAAAAAAAAAAAAA rejected", "AAAAAAAAAAAAAAAAAAAA"),
        ("our own key sk_0123456789abcdefghijklmnopqrstuvwxyz0123", "0123456789abcdef"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "eyJhbGciOiJIUzI1NiJ9"),
        ("GET https://x.example/v1/embed?alt=json&key=AIzaSyA-1234567890abcdefghijklmnopqrs", "1234567890"),
        ("POST https://x.example/v1?api_key=s3cr3t-value&b=1 failed", "s3cr3t-value"),
        ("could not reach https://bob:hunter2@proxy.internal/v1", "hunter2"),
        ("voyage said: pa-abcdefghijklmnopqrstuvwxyz0123 is invalid", "pa-abcdefghijklmnop"),
    ],
)
def test_credentials_are_masked(text: str, gone: str) -> None:
    out = scrub(text)
    assert gone not in out and MASK in out, out


def test_the_known_secret_goes_whatever_its_shape() -> None:
    secret = "plainsecretvalue42"
    assert scrub(f"rejected key {secret}!", [secret]) == f"rejected key {MASK}!"
    # too short to mask without eating ordinary words
    assert scrub("the user is bob", ["bob"]) == "the user is bob"


def test_ordinary_messages_are_untouched() -> None:
    for text in (
        "Invalid 'input[3]': maximum input length is 8192 tokens.",
        "openai kept failing; last answer HTTP 500: The server had an error",
        "Rate limit reached on requests per min (RPM). Please try again in 20ms.",
        "https://api.openai.com/v1/embeddings?model=x is unreachable",
        "task-risk assessment",
    ):
        assert scrub(text) == text
