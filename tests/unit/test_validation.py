import datetime as dt

import pytest
from embedd_server.domain import catalog
from embedd_server.domain.errors import ApiError, Kind
from embedd_server.domain.validation import (
    Violations,
    check_base_url,
    check_env_name,
    check_host,
    check_id,
    check_identifier,
    check_name,
    check_ssl_mode,
    encode_cursor,
    page_request,
)


def test_violations_collects_every_field() -> None:
    v = Violations()
    check_name(v, "")
    check_name(v, "x" * 101, field="other")
    with pytest.raises(ApiError) as info:
        v.raise_if_any()
    err = info.value
    assert err.kind is Kind.INVALID and err.code == "validation_error"
    assert [x.field for x in err.violations] == ["name", "other"]
    assert "at most 100" in err.message


@pytest.mark.parametrize("name", ["prod", "staging-2", "a_b", "x" * 50])
def test_env_names_accepted(name: str) -> None:
    v = Violations()
    check_env_name(v, name)
    assert not v


@pytest.mark.parametrize("name", ["", "Prod", "has space", "x" * 51, "ümlaut"])
def test_env_names_rejected(name: str) -> None:
    v = Violations()
    check_env_name(v, name)
    assert v


def test_check_id_prefix() -> None:
    assert check_id("conn_abc", "conn_", "connection_id") == "conn_abc"
    with pytest.raises(ApiError, match="connection_id"):
        check_id("vt_abc", "conn_", "connection_id")
    with pytest.raises(ApiError, match="is required"):
        check_id("", "conn_", "connection_id")


def test_ssl_modes() -> None:
    v = Violations()
    assert check_ssl_mode(v, "", "s") == "prefer"
    assert check_ssl_mode(v, "verify_full", "s") == "verify-full"
    assert check_ssl_mode(v, "require", "s") == "require"
    assert not v
    check_ssl_mode(v, "always", "s")
    assert v


def test_page_request_defaults_bounds_and_cursor_roundtrip() -> None:
    assert page_request(0, "").limit == 20
    assert page_request(100, "").limit == 100
    for bad in (-1, 101):
        with pytest.raises(ApiError, match="limit"):
            page_request(bad, "")
    when = dt.datetime(2026, 3, 13, 10, 0, 0, 123456, tzinfo=dt.UTC)
    page = page_request(5, encode_cursor(when, "conn_x"))
    assert page.after == (when, "conn_x")
    with pytest.raises(ApiError, match="cursor"):
        page_request(5, "not-a-cursor!")


def test_catalog_matches_the_seed_table() -> None:
    seed = {
        ("openai", "text-embedding-3-small"): 1536,
        ("openai", "text-embedding-3-large"): 3072,
        ("openai", "text-embedding-ada-002"): 1536,
        ("gemini", "gemini-embedding-001"): 3072,
        ("gemini", "text-embedding-005"): 768,
        ("gemini", "text-embedding-004"): 768,
        ("voyage", "voyage-3.5"): 1024,
        ("voyage", "voyage-3.5-lite"): 512,
        ("voyage", "voyage-code-3"): 1024,
        ("voyage", "voyage-3-large"): 1024,
        ("voyage", "voyage-3-lite"): 512,
    }
    for (provider, model), dims in seed.items():
        info = catalog.find_model(provider, model)
        assert info is not None and info.dimensions == dims


def test_unknown_model_lists_valid_ones() -> None:
    with pytest.raises(ApiError) as info:
        catalog.require_model("openai", "text-embedding-4", "default_model")
    assert info.value.violations[0].field == "default_model"
    assert "text-embedding-3-small" in info.value.message
    assert "voyage-3.5" not in info.value.message


def test_dimensions() -> None:
    info = catalog.require_model("openai", "text-embedding-3-small", "m")
    assert catalog.check_dimensions(info, 0, "d") == 1536
    assert catalog.check_dimensions(info, 512, "d") == 512
    with pytest.raises(ApiError, match="1536"):
        catalog.check_dimensions(info, 100, "d")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("products", True),
        ("x" * 63, True),
        ("é" * 31, True),
        ("é" * 32, False),
        ("x" * 64, False),
        ("", False),
    ],
)
def test_identifiers_are_at_most_63_bytes(value: str, ok: bool) -> None:
    v = Violations()
    check_identifier(v, value, "source_table")
    assert not v if ok else v


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("db.example.com", True),
        ("localhost", True),
        ("127.0.0.1", True),
        ("::1", True),
        ("db_1.internal.", True),
        ("h1,h2", False),  # asyncpg would read a list of hosts
        ("/var/run/postgresql", False),  # a socket directory
        ("db.example.com:5432", False),
        ("a" * 254, False),
        ("-x", False),
    ],
)
def test_hosts(host: str, ok: bool) -> None:
    v = Violations()
    check_host(v, host, "credentials.host")
    assert not v if ok else v


def test_base_url_rules() -> None:
    for good in ("https://api.openai.com/v1", "http://vllm.internal:8000/v1"):
        v = Violations()
        check_base_url(v, good, "base_url")
        assert not v
    for bad in ("ftp://x", "https://user:pw@host/v1", "http://host:99999999/", "https://" + "a" * 3000):
        v = Violations()
        check_base_url(v, bad, "base_url")
        assert v, bad


def test_ids_are_strict() -> None:
    for bad in ("conn_", "conn_ABC", "conn_a b", "conn_" + "a" * 61):
        with pytest.raises(ApiError, match="connection_id"):
            check_id(bad, "conn_", "connection_id")
