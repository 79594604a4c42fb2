"""Telling security failures from outages, so that they fail at once instead of being retried.

A missing or wrong token and a failed TLS handshake reach tritonclient as UNAVAILABLE, the status
of a server that is down. Their messages tell them apart, except for one case: a server that
requires a client certificate (mutual TLS), or speaks TLS to a plaintext client, just closes the
connection ("Socket closed"). For that case `diagnose_closed_connection` asks the server itself,
with one TLS handshake of the standard library's `ssl`.
"""

from __future__ import annotations

import socket
import ssl

from tritonclient.utils import InferenceServerException

from ubm import contract
from ubm.config import TlsConfig

TOKEN_REFUSED = "This protocol is restricted"
"""Triton's answer to a call without the token its restricted protocol expects."""
TLS_HANDSHAKE_FAILED = "Tls handshake failed"
CONNECTION_CLOSED = "Socket closed"
PROBE_TIMEOUT_S = 2.0


def token_refused(error: InferenceServerException) -> bool:
    return TOKEN_REFUSED in (error.message() or "")


def handshake_failed(error: InferenceServerException) -> bool:
    return TLS_HANDSHAKE_FAILED in (error.message() or "")


def connection_closed(error: InferenceServerException) -> bool:
    return CONNECTION_CLOSED in (error.message() or "")


def authentication_message(url: str) -> str:
    return (
        f"authentication failed at {url}: the server requires a token (header"
        f" {contract.TOKEN_HEADER}) and this call had none or a wrong one; pass --token,"
        f" set {contract.TOKEN_ENV}, or UbmClient(token=...)"
    )


def handshake_message(url: str, error: InferenceServerException) -> str:
    detail = (error.message() or "").split(TLS_HANDSHAKE_FAILED, 1)[-1].strip(" :")
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        return (
            f"TLS handshake with {url} failed: the server's certificate is not trusted"
            " (CERTIFICATE_VERIFY_FAILED); pass --root-cert with the CA that signed it"
        )
    return (
        f"TLS handshake with {url} failed: {detail or 'no detail'}. Check --root-cert (the CA"
        " that signed the server's certificate), or drop --tls if the server speaks plaintext"
    )


def diagnose_closed_connection(url: str, tls: TlsConfig | None) -> str | None:
    """Why the server at `url` closes our connections, when TLS is the reason; else None.

    Makes one TCP connection and TLS handshake (never an RPC). Returns None when the server
    cannot be reached or the handshake shows nothing wrong: then it is an outage.
    """
    host, _, port = url.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S) as raw:
            context = _context(tls)
            try:
                with context.wrap_socket(raw, server_hostname=host) as conn:
                    conn.settimeout(PROBE_TIMEOUT_S)
                    if tls is None:
                        return (
                            f"the server at {url} speaks TLS: connect with --tls or --root-cert"
                            " (TlsConfig)"
                        )
                    # TLS 1.3: the server checks the client's certificate after the handshake,
                    # then closes the connection (or sends an alert) instead of talking HTTP/2.
                    if conn.recv(1) == b"":
                        return _client_certificate_refused(url, tls)
            except ssl.SSLError as e:
                return _explain(url, tls, e)
    except (OSError, ValueError):  # unreachable, or a server waiting for us to speak: no TLS issue
        return None
    return None


def _client_certificate_refused(url: str, tls: TlsConfig) -> str:
    if tls.certificate_chain is None:
        return (
            f"the server at {url} requires a client certificate (mutual TLS):"
            " pass --client-cert and --client-key"
        )
    return f"the server at {url} refused the client certificate (not signed by a CA it trusts)"


def _context(tls: TlsConfig | None) -> ssl.SSLContext:
    if tls is None:  # only to learn whether the server speaks TLS at all
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = ssl.create_default_context(
        cafile=None if tls.root_certificates is None else str(tls.root_certificates)
    )
    if tls.certificate_chain is not None and tls.private_key is not None:
        context.load_cert_chain(str(tls.certificate_chain), str(tls.private_key))
    context.set_alpn_protocols(["h2"])
    return context


def _explain(url: str, tls: TlsConfig | None, error: ssl.SSLError) -> str | None:
    reason = (error.reason or str(error)).upper()
    if tls is None:
        return None
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        return (
            f"TLS handshake with {url} failed: the server's certificate is not trusted;"
            " pass --root-cert with the CA that signed it"
        )
    refused = ("CERTIFICATE_REQUIRED", "HANDSHAKE", "UNKNOWN_CA", "BAD_CERTIFICATE")
    if any(word in reason for word in refused):
        return _client_certificate_refused(url, tls)
    return None
