"""The client side of the CLI's connections: a channel from the TLS flags, and, when a call
cannot connect, what the server at the other end speaks, so the error can say which flags to
pass.

gRPC reports a plaintext call to a TLS port, and a TLS call without a client certificate to a
mutual-TLS port, only as "Socket closed". `probe` opens one connection of its own and tells
them apart: a TLS handshake that the server answers (it speaks TLS); one it answers and then
closes without a word (it wants a client certificate, or refused the one given); one it does not
understand (it speaks plaintext). It never trusts what it learns: it verifies no certificate and
sends nothing but the HTTP/2 preface, and its verdict only chooses a hint.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

PROBE_SECONDS = 2.0
"""How long the probe waits for the server at each step; past it, no hint."""

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
"""The client's connection preface and an empty SETTINGS frame: a gRPC server answers it with
its own SETTINGS frame."""

FLAGS = "--tls-ca-file, --tls-client-cert-file and --tls-client-key-file"


@dataclass(frozen=True)
class ClientTls:
    """The TLS flags of a command that calls a server; all unset: plaintext."""

    system_roots: bool = False
    """--tls: speak TLS, trusting the system's CAs (implied by any file below)."""
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    server_name: str | None = None
    """The name the server's certificate must carry, when it is not the target's host."""

    def __post_init__(self) -> None:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError(
                "a client certificate needs both --tls-client-cert-file and --tls-client-key-file"
            )

    @property
    def used(self) -> bool:
        return (
            self.system_roots
            or self.ca_file is not None
            or self.client_cert_file is not None
            or self.server_name is not None
        )

    def channel(self, target: str) -> grpc.Channel:
        import grpc

        if not self.used:
            return grpc.insecure_channel(target)
        credentials = grpc.ssl_channel_credentials(
            self.ca_file.read_bytes() if self.ca_file is not None else None,
            self.client_key_file.read_bytes() if self.client_key_file is not None else None,
            self.client_cert_file.read_bytes() if self.client_cert_file is not None else None,
        )
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.secure_channel(target, credentials, options=options)


class Speaks(enum.Enum):
    """What the probe found at the other end of a connection."""

    PLAINTEXT = "plaintext"
    TLS = "TLS"
    TLS_CLOSED = "TLS, then closed"
    """It completed a handshake, then closed the connection: it wants a client certificate, or
    refused the one it was given."""
    UNKNOWN = "unknown"


def probe(target: str, tls: ClientTls, seconds: float = PROBE_SECONDS) -> Speaks:
    """What the server at target speaks; UNKNOWN when it cannot be reached or said nothing."""
    host, _, port = target.rpartition(":")
    host = host.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:").strip("[]")
    if not host or not port.isdigit():
        return Speaks.UNKNOWN
    try:
        raw = socket.create_connection((host, int(port)), timeout=seconds)
    except OSError:
        return Speaks.UNKNOWN  # gRPC's own message already says it cannot connect
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a verdict on the protocol, not on trust
    context.set_alpn_protocols(["h2"])
    if tls.client_cert_file is not None and tls.client_key_file is not None:
        # gRPC says what is wrong with unusable files; the probe goes without them.
        with contextlib.suppress(OSError, ssl.SSLError):
            context.load_cert_chain(tls.client_cert_file, tls.client_key_file)
    with raw:
        try:
            wrapped = context.wrap_socket(raw)
        except ssl.SSLError:
            return Speaks.PLAINTEXT  # no TLS record came back (WRONG_VERSION_NUMBER)
        except OSError:
            return Speaks.UNKNOWN
        with wrapped:
            try:
                wrapped.sendall(HTTP2_PREFACE)
                answer = wrapped.recv(9)
            except ssl.SSLError:
                return Speaks.TLS_CLOSED  # an alert: certificate required, unknown CA
            except OSError:
                return Speaks.UNKNOWN
            return Speaks.TLS if answer else Speaks.TLS_CLOSED


def hint(target: str, tls: ClientTls, details: str) -> str | None:
    """What to change when a call to target could not connect, or None when nothing is known.

    details is gRPC's message; where it does not say enough by itself, the server is probed."""
    if tls.used and "CERTIFICATE_VERIFY_FAILED" in details:
        trusted = "--tls-ca-file" if tls.ca_file is not None else "the system's CAs"
        return (
            f"the certificate of {target} is not signed by a CA in {trusted}: pass "
            "--tls-ca-file with the CA that signed it"
        )
    if tls.used and "Hostname Verification" in details:
        return (
            f"the certificate of {target} does not carry that name: call it by a name the "
            "certificate carries, or pass --tls-server-name with one"
        )
    speaks = probe(target, tls)
    if not tls.used and speaks in (Speaks.TLS, Speaks.TLS_CLOSED):
        return (
            f"{target} speaks TLS and this call was plaintext: pass --tls-ca-file with the CA "
            "of its certificate (or --tls to trust the system's CAs)"
            + (
                "; it also wants a client certificate (mutual TLS): --tls-client-cert-file "
                "and --tls-client-key-file"
                if speaks is Speaks.TLS_CLOSED
                else ""
            )
        )
    if tls.used and speaks is Speaks.PLAINTEXT:
        return (
            f"{target} does not speak TLS (it may be a plaintext server): leave out --tls and "
            f"{FLAGS} (and their SEMCACHE_TLS_* variables)"
        )
    if tls.used and speaks is Speaks.TLS_CLOSED:
        if tls.client_cert_file is None:
            return (
                f"{target} wants a client certificate (mutual TLS): pass "
                "--tls-client-cert-file and --tls-client-key-file"
            )
        return (
            f"{target} refused the client certificate: it must be signed by a CA of the "
            "server's --tls-client-ca-file"
        )
    return None
