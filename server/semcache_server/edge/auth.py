"""Who is calling: API keys map a call to its tenant, and the tenant to the entries it may see.

Keys travel as `authorization: Bearer <key>` metadata. The keys file (`--api-keys-file`) holds one
key a line, `tenant:key` or `tenant:sha256:<hex digest of the key>`, so the file need not hold
secrets; blank lines and lines starting with `#` are skipped. The file is read again when it
changes, so keys can be added and revoked without a restart. A file without a key is refused at
start-up and, read again, keeps the keys in use: an empty or half-written file never locks every
caller out.

A tenant's entries live in a namespace of its own. Tenants an operator lists in
`--shared-tenants` share one namespace instead: they reuse each other's answers, and still see
who asked what only for their own entries (`CachedEntry.owned_by`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from semcache_server.core.admin import Scope
from semcache_server.core.domain import OPEN_ACCESS, Caller, Forbidden, Unauthenticated

log = logging.getLogger(__name__)

SHARED_NAMESPACE = "shared"
"""The namespace of the tenants listed in --shared-tenants."""

TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MIN_KEY_CHARS = 16
"""Shorter keys can be guessed; `openssl rand -hex 32` makes a good one."""
RELOAD_CHECK_SECONDS = 1.0

Metadata = Sequence[tuple[str, str | bytes]]


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the line (never the key on it)."""


def tenant_namespace(tenant: str, shared_tenants: Iterable[str] = ()) -> str:
    """Distinct from the open server's "default" namespace: turning authentication on never hands
    the entries stored without it to a tenant that happens to be called "default"."""
    return SHARED_NAMESPACE if tenant in set(shared_tenants) else f"tenant/{tenant}"


def parse_keys(text: str, source: str) -> list[tuple[str, bytes]]:
    """(tenant, sha256 digest of its key) for every key line of a keys file."""
    entries: list[tuple[str, bytes]] = []
    seen: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}, line {number}"
        tenant, separator, secret = line.partition(":")
        if not separator or not secret:
            raise KeysFileError(f"{where}: expected 'tenant:key' or 'tenant:sha256:<hex>'")
        if not TENANT_NAME.fullmatch(tenant):
            raise KeysFileError(
                f"{where}: a tenant name is 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if secret.startswith("sha256:"):
            hex_digest = secret.removeprefix("sha256:").lower()
            if not re.fullmatch(r"[0-9a-f]{64}", hex_digest):
                raise KeysFileError(f"{where}: a sha256 digest is 64 hexadecimal characters")
            digest = bytes.fromhex(hex_digest)
        else:
            if len(secret) < MIN_KEY_CHARS:
                raise KeysFileError(f"{where}: a key needs at least {MIN_KEY_CHARS} characters")
            digest = hashlib.sha256(secret.encode("utf-8")).digest()
        if digest in seen:
            raise KeysFileError(f"{where}: this key is already given to a tenant")
        seen.add(digest)
        entries.append((tenant, digest))
    if not entries:
        # An empty, comment-only or half-written file would refuse every caller.
        raise KeysFileError(f"{source}: no key in the file (it is empty or holds only comments)")
    return entries


class ApiKeys:
    """The keys a server accepts."""

    def __init__(self, entries: Sequence[tuple[str, bytes]]) -> None:
        self._entries = tuple(entries)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(tenant for tenant, _ in self._entries)

    def tenant_of(self, key: str) -> str | None:
        """The key's tenant. Every stored digest is compared, in constant time each, so the time
        taken says nothing about which key, or how much of one, matched."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        found: str | None = None
        for tenant, expected in self._entries:
            if hmac.compare_digest(digest, expected):
                found = tenant
        return found


def bearer_key(metadata: Metadata) -> str | None:
    for name, value in metadata:
        if name.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        scheme, _, key = text.strip().partition(" ")
        if scheme.lower() == "bearer" and key.strip():
            return key.strip()
    return None


class Authenticator(Protocol):
    """Names the caller of a call from its metadata, or raises Unauthenticated."""

    def caller(self, metadata: Metadata) -> Caller: ...


class OpenAccess:
    """No API keys: every caller is the same tenant. Safe on loopback only (see Settings)."""

    def caller(self, metadata: Metadata) -> Caller:
        return OPEN_ACCESS


class KeysFileAuthenticator:
    """API keys from a keys file, read again when the file changes."""

    def __init__(self, path: Path, shared_tenants: Iterable[str] = ()) -> None:
        self._path = path
        self._shared = frozenset(shared_tenants)
        self._keys = ApiKeys(parse_keys(path.read_text(encoding="utf-8"), str(path)))
        self._stamp = self._file_stamp()
        self._next_check = time.monotonic() + RELOAD_CHECK_SECONDS
        unknown = sorted(self._shared - self._keys.tenants)
        if unknown:
            log.warning("--shared-tenants names tenants without a key: %s", ", ".join(unknown))

    @property
    def tenants(self) -> frozenset[str]:
        return self._keys.tenants

    def caller(self, metadata: Metadata) -> Caller:
        self._reload_if_changed()
        key = bearer_key(metadata)
        if key is None:
            raise Unauthenticated(
                "this server needs an API key: send the metadata 'authorization: Bearer <key>'"
            )
        tenant = self._keys.tenant_of(key)
        if tenant is None:
            raise Unauthenticated("the API key is not one this server accepts")
        return Caller(tenant, tenant_namespace(tenant, self._shared))

    def _file_stamp(self) -> tuple[int, int, int]:
        stat = self._path.stat()
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _reload_if_changed(self) -> None:
        """At most once a second. A file that cannot be read or parsed, or holds no key, keeps the
        keys in use, and is reported once for each change."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + RELOAD_CHECK_SECONDS
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            text = self._path.read_text(encoding="utf-8")
            self._keys = ApiKeys(parse_keys(text, str(self._path)))
        except (OSError, KeysFileError) as error:
            log.error("keeping the API keys in use: %s", error)
            return
        log.info("API keys read again from %s: %d tenants", self._path, len(self._keys.tenants))


class TenantKeysOnly:
    """The semcache service's keys: a tenant's. An operator's key (--admin-keys-file) is told
    apart from an unknown one, so its holder learns that it is the wrong kind of key, not that
    the server does not accept it."""

    def __init__(self, tenants: Authenticator, operators: KeysFileAuthenticator) -> None:
        self._tenants = tenants
        self._operators = operators

    def caller(self, metadata: Metadata) -> Caller:
        try:
            return self._tenants.caller(metadata)
        except Unauthenticated:
            try:
                self._operators.caller(metadata)
            except Unauthenticated:
                pass
            else:
                raise Forbidden(
                    "this is an operator's key, which reaches CacheAdminService only: Ask and "
                    "AskStream need a tenant's key (one of --api-keys-file)"
                ) from None
            raise


class AdminAccess:
    """Who may do what through CacheAdminService: an operator's key (--admin-keys-file) reaches
    every namespace, or the tenant it names; a tenant's key reaches its own entries only. A server
    without any keys lets every caller act on everything (it listens on loopback only)."""

    def __init__(
        self,
        tenants: Authenticator,
        operators: KeysFileAuthenticator | None,
        shared_tenants: Iterable[str] = (),
        *,
        open_access: bool,
    ) -> None:
        """open_access: the server has no tenant keys (tenants may be wrapped, so it is told)."""
        self._tenants = tenants
        self._operators = operators
        self._shared = frozenset(shared_tenants)
        self._open = open_access

    def scope(self, metadata: Metadata, tenant: str) -> Scope:
        """tenant: the request's own field, which only an operator may set."""
        if self._operators is None and self._open:
            return Scope(None)
        if self._operators is not None:
            try:
                self._operators.caller(metadata)
            except Unauthenticated:
                pass
            else:
                return Scope(tenant_namespace(tenant, self._shared) if tenant else None)
        caller = self._tenants.caller(metadata)
        if tenant and tenant != caller.tenant:
            raise Forbidden("a tenant's key reaches its own entries only; leave tenant empty")
        shared = caller.namespace == SHARED_NAMESPACE
        return Scope(caller.namespace, caller.tenant if shared else None)
