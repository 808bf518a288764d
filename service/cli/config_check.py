"""Misconfiguration checks run by `labelrank doctor config` and before `labelrank serve`."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from service.settings import Settings

Severity = Literal["error", "warning"]
MIN_KEY_CHARS = 16
PLACEHOLDERS = ("changeme", "change-me", "change_me", "secret", "password", "example", "test",
                "dummy", "placeholder", "your", "xxx", "todo", "default", "apikey", "api-key",
                "api_key", "key", "sk-...", "<", "...")
MAX_SANE_BODY_BYTES = 10_000_000


@dataclass(frozen=True)
class Finding:
    """One problem: how bad, a stable code, and what to do about it."""

    severity: Severity
    code: str
    message: str

    def line(self) -> str:
        """`error [code]: message`, as the CLI prints it."""
        return f"{self.severity} [{self.code}]: {self.message}"


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only reaches this machine."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    address = _address(host)
    return address is not None and address.is_loopback


def is_private(host: str) -> bool:
    """Whether `host` is loopback or on a private network (RFC 1918, ULA, link-local)."""
    if is_loopback(host):
        return True
    address = _address(host)
    return address is not None and (address.is_private or address.is_link_local)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        try:  # a name: judge where it resolves to, without waiting long on DNS
            return ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0])
        except (OSError, ValueError, IndexError):
            return None


def weak_key(key: SecretStr) -> str | None:
    """Why a key is too weak to guard a server (placeholder or short), or None."""
    value = key.get_secret_value().strip()
    lowered = value.lower()
    if any(lowered == word or (len(word) > 3 and word in lowered) for word in PLACEHOLDERS):
        return "looks like a placeholder"
    if len(value) < MIN_KEY_CHARS:
        return f"has {len(value)} characters; use at least {MIN_KEY_CHARS} random ones"
    if len(set(value)) < 6:
        return "has too few distinct characters"
    return None


def check_config(settings: Settings, host: str = "127.0.0.1") -> list[Finding]:
    """Everything wrong with serving these settings on `host`, errors first."""
    findings = [*_api_keys(settings, host), *_chroma(settings), *_llm(settings),
                *_limits(settings)]
    return sorted(findings, key=lambda f: f.severity != "error")


def check_index(settings: Settings) -> list[Finding]:
    """Whether the configured index exists and was built with the configured embedder."""
    where = f"{settings.chroma_host}:{settings.chroma_port}" if settings.chroma_host else (
        str(settings.db))
    if settings.chroma_host is None and not (settings.db / "chroma.sqlite3").is_file():
        return [Finding("warning", "no_index", f"no index in {settings.db} yet: run "
                        "`labelrank index CATALOG` (serve starts, but answers 503 until then)")]
    from retrieval.index import chroma_client, index_metadata
    from service.factory import index_embedder

    try:
        # Closed at once: an embedded index's memory is freed only once no client holds it.
        with chroma_client(settings.db, settings.chroma_host, settings.chroma_port) as client:
            meta = index_metadata(client, settings.collection)
    except Exception as exc:  # a finding, not a crash: whatever Chroma raised
        return [Finding("error", "index_unreadable",
                        f"cannot open collection {settings.collection!r} at {where}: "
                        f"{type(exc).__name__}: {str(exc)[:200]}")]
    built_with = meta.get("embedder")
    if built_with != index_embedder(settings, built_with):
        return [Finding("error", "index_embedder_mismatch",
                        f"the index at {where} was built with embedder {built_with!r}, but "
                        f"LABELRANK_EMBEDDER is {settings.embedder!r}: queries would be refused; "
                        "use the same embedder or rebuild into another LABELRANK_DB")]
    return []


def _api_keys(settings: Settings, host: str) -> list[Finding]:
    public = not is_loopback(host)
    found: list[Finding] = []
    if settings.api_key is None and public:
        found.append(Finding("error", "no_api_key_on_public_bind",
                             f"serving on {host} (not loopback) without LABELRANK_API_KEY: anyone "
                             "who reaches the port can classify and, without a write key, edit "
                             "labels; set LABELRANK_API_KEY or bind 127.0.0.1"))
    for name, key in (("LABELRANK_API_KEY", settings.api_key),
                      ("LABELRANK_API_WRITE_KEY", settings.api_write_key)):
        if key is not None and (why := weak_key(key)):
            found.append(Finding("error" if public else "warning", "weak_api_key",
                                 f"{name} {why}"))
    if settings.api_write_key is not None and settings.api_key is None:
        found.append(Finding("warning", "write_key_without_read_key",
                             "LABELRANK_API_WRITE_KEY is set but LABELRANK_API_KEY is not: "
                             "reads need no key at all"))
    if (settings.api_key is not None and settings.api_write_key is not None
            and settings.api_key.get_secret_value() == settings.api_write_key.get_secret_value()):
        found.append(Finding("warning", "same_read_and_write_key",
                             "LABELRANK_API_WRITE_KEY equals LABELRANK_API_KEY: every reader "
                             "can edit labels"))
    return found


def _chroma(settings: Settings) -> list[Finding]:
    host = settings.chroma_host
    if host is None or is_private(host):
        return []
    severity: Severity = "warning" if _address(host) is None else "error"
    return [Finding(severity, "chroma_not_private",
                    f"LABELRANK_CHROMA_HOST={host} is not a loopback or private address; Chroma "
                    "has no built-in authentication since 1.0: keep it on loopback or a private "
                    "network")]


def _llm(settings: Settings) -> list[Finding]:
    url = settings.llm_base_url
    if url is None:
        return []
    parts = urlsplit(url)
    host = parts.hostname or ""
    found: list[Finding] = []
    if parts.scheme not in ("http", "https") or not host:
        found.append(Finding("error", "llm_url_invalid",
                             f"LABELRANK_LLM_BASE_URL={url!r} is not an http(s) URL"))
        return found
    if settings.llm_api_key is None and not is_private(host):
        found.append(Finding("error", "llm_key_missing",
                             f"the LLM endpoint {host} is public but LABELRANK_LLM_API_KEY is "
                             "not set: every call would fail (401) and answers degrade"))
    if (parts.scheme == "http" and settings.llm_api_key is not None
            and not is_private(host)):
        found.append(Finding("error", "llm_key_in_clear",
                             f"the LLM API key would travel unencrypted to {host}: use https"))
    if settings.llm_breaker_failures == 0:
        found.append(Finding("warning", "llm_breaker_off",
                             "LABELRANK_LLM_BREAKER_FAILURES=0: a failing LLM endpoint is called "
                             "for every text, with every retry"))
    return found


def _limits(settings: Settings) -> list[Finding]:
    if settings.max_body_bytes <= MAX_SANE_BODY_BYTES:
        return []
    return [Finding("warning", "large_body_limit",
                    f"LABELRANK_MAX_BODY_BYTES={settings.max_body_bytes}: one request may hold "
                    "that much memory while it is parsed")]
