"""The request guard's rules on real ASGI scopes, the options the Serve builder parses, the
token file, and the JSON error body. No Ray: the end-to-end twins are in test_hardening.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dpnet_runtime.errors import InputError
from dpnet_serve.api_errors import ERROR_CODES, error_body, status_of
from dpnet_serve.guard import AccessPolicy, check_request
from dpnet_serve.options import (
    LOOPBACK_HOSTS,
    TOKEN_ENV,
    ServeOptions,
    is_loopback_host,
    options_from_args,
    read_token,
)

TOKEN = "s3cret-token-of-32-characters-ok"


def _policy(**changes: Any) -> AccessPolicy:
    values: dict[str, Any] = {
        "token": TOKEN,
        "public_read": False,
        "allowed_hosts": frozenset(LOOPBACK_HOSTS),
        "max_body_bytes": 1000,
        "request_timeout_s": 5.0,
        "max_ongoing_requests": 4,
        **changes,
    }
    return AccessPolicy(**values)


def _scope(
    method: str = "GET",
    path: str = "/classes",
    client: str = "127.0.0.1",
    **headers: str,
) -> dict[str, Any]:
    sent = {"host": "127.0.0.1:8000", **{k.replace("_", "-"): v for k, v in headers.items()}}
    return {
        "type": "http",
        "method": method,
        "path": path,
        "client": (client, 50000),
        "headers": [(key.encode(), value.encode()) for key, value in sent.items()],
    }


def _code(policy: AccessPolicy, scope: dict[str, Any], **state: Any) -> str | None:
    refusal = check_request(policy, scope, draining=state.get("draining", False),
                            ongoing=state.get("ongoing", 0))  # fmt: skip
    return None if refusal is None else refusal.code


BEARER = f"Bearer {TOKEN}"


def test_writes_need_the_token_and_reads_too_unless_public_read() -> None:
    policy = _policy()
    write = {"method": "POST", "path": "/classes/cat", "content_length": "10"}
    assert _code(policy, _scope(**write)) == "unauthorized"
    assert _code(policy, _scope(**write, authorization="Bearer wrong")) == "unauthorized"
    assert _code(policy, _scope(**write, authorization=BEARER)) is None
    assert _code(policy, _scope("DELETE", "/classes/cat")) == "unauthorized"
    assert _code(policy, _scope()) == "unauthorized"
    assert _code(policy, _scope(authorization=BEARER)) is None
    public = _policy(public_read=True)
    assert _code(public, _scope()) is None
    segment = {"method": "POST", "path": "/classes/cat/segment", "content_length": "10"}
    assert _code(public, _scope(**segment)) is None  # a query reads
    assert _code(public, _scope(**write)) == "unauthorized"
    assert _code(public, _scope("DELETE", "/classes/cat")) == "unauthorized"
    refusal = check_request(policy, _scope(), draining=False, ongoing=0)
    assert refusal is not None and (b"www-authenticate", b'Bearer realm="dpnet-serve"') in (
        refusal.headers
    )


def test_without_a_token_only_loopback_clients_are_answered() -> None:
    policy = _policy(token=None)
    assert _code(policy, _scope("DELETE", "/classes/cat")) is None
    assert _code(policy, _scope("DELETE", "/classes/cat", client="::1")) is None
    assert _code(policy, _scope(client="10.1.2.3")) == "forbidden_client"


def test_host_allow_list_defeats_dns_rebinding() -> None:
    policy = _policy()
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"):
        assert _code(policy, _scope(host=host, authorization=BEARER)) is None, host
    for host in ("evil.example:8000", "127.0.0.1.evil.example", ""):
        assert _code(policy, _scope(host=host, authorization=BEARER)) == "forbidden_host", host
    named = _policy(allowed_hosts=frozenset({"seg.example.com"}))
    assert _code(named, _scope(host="seg.example.com:443", authorization=BEARER)) is None
    assert (
        _code(_policy(allowed_hosts=frozenset({"*"})), _scope(host="any", authorization=BEARER))
        is None
    )


def test_browser_requests_from_another_origin_are_refused() -> None:
    policy = _policy(token=None)
    cross = _scope("POST", "/classes/cat", content_length="10", origin="http://evil.example")
    assert _code(policy, cross) == "forbidden_origin"
    assert _code(policy, _scope(origin="null")) == "forbidden_origin"
    same = _scope("POST", "/classes/cat", content_length="10", origin="http://127.0.0.1:8000")
    assert _code(policy, same) is None  # the /docs page of the server itself


def test_body_size_is_checked_from_the_headers() -> None:
    policy = _policy(token=None)
    post = {"method": "POST", "path": "/classes/cat/segment"}
    assert _code(policy, _scope(**post, content_length="1000")) is None
    assert _code(policy, _scope(**post, content_length="1001")) == "body_too_large"
    assert _code(policy, _scope(**post, content_length="12x")) == "invalid_input"
    assert _code(policy, _scope(**post, transfer_encoding="chunked")) == "length_required"
    assert _code(policy, _scope(**post)) is None  # no body at all
    assert _code(policy, _scope(content_length="5000")) == "body_too_large"  # a GET too


def test_limits_draining_and_probes() -> None:
    policy = _policy(token=None)
    assert _code(policy, _scope(), ongoing=3) is None
    assert _code(policy, _scope(), ongoing=4) == "overloaded"
    assert _code(policy, _scope(), draining=True) == "draining"
    for path in ("/healthz", "/readyz"):  # probes carry no token and no public host name
        probe = _scope(path=path, host="10.0.0.7:8000", client="10.0.0.1")
        assert _code(_policy(), probe, draining=True, ongoing=99) is None


def test_error_bodies_are_one_line_json_with_a_known_code() -> None:
    body = json.loads(error_body("class_not_found", "no class 'x'\n  is registered"))
    assert body == {"error": "no class 'x' is registered", "code": "class_not_found"}
    assert status_of("overloaded") == 503 and status_of("store_failed") == 507
    assert all(400 <= status < 600 for status, _ in ERROR_CODES.values())


def test_builder_arguments_become_options(tmp_path: Path) -> None:
    options = options_from_args(
        {"model": str(tmp_path), "replicas": "2", "max-batch": 4, "public_read": "true",
         "allowed_hosts": "a.example, b.example", "precision": "none", "threads": "1",
         "request_timeout_s": "7.5"}
    )  # fmt: skip
    assert options == ServeOptions(
        model=tmp_path, replicas=2, max_batch=4, public_read=True, threads=1,
        allowed_hosts=("a.example", "b.example"), precision=None, request_timeout_s=7.5,
    )  # fmt: skip
    with pytest.raises(InputError, match="unknown dpnet-serve argument 'replica'; known: "):
        options_from_args({"model": "m", "replica": "2"})
    with pytest.raises(InputError, match=r"replicas='two': not a int"):
        options_from_args({"model": "m", "replicas": "two"})
    with pytest.raises(InputError, match="needs model=DIR"):
        options_from_args({"replicas": "2"})
    with pytest.raises(InputError, match="autoscaling needs min_replicas <= replicas"):
        options_from_args({"model": "m", "replicas": "5", "max_replicas": "4"})


def test_the_token_comes_from_its_file_or_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    options = ServeOptions(model=tmp_path, token_file=token_file)
    assert read_token(options, {}) == TOKEN
    assert read_token(ServeOptions(model=tmp_path), {TOKEN_ENV: TOKEN}) == TOKEN
    assert read_token(ServeOptions(model=tmp_path), {}) is None
    token_file.write_text("short\n")
    with pytest.raises(InputError, match="at least 16 characters"):
        read_token(options, {})
    with pytest.raises(InputError, match="cannot be read"):
        read_token(ServeOptions(model=tmp_path, token_file=tmp_path / "none"), {})


def test_loopback_hosts() -> None:
    assert all(is_loopback_host(host) for host in ("127.0.0.1", "127.8.9.1", "::1", "[::1]"))
    assert not any(is_loopback_host(host) for host in ("0.0.0.0", "::", "10.0.0.1", "example"))


def test_every_error_code_is_documented() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    for page in ("serve.md", "troubleshooting.md"):
        text = (docs / page).read_text(encoding="utf-8")
        missing = [code for code in ERROR_CODES if f"`{code}`" not in text]
        assert missing == [], (page, missing)
