"""TLS settings for every engine and the client, with the standard library's ``ssl``.

Secure defaults: TLS 1.2 or newer, the system's cipher choice, certificates
verified (and host names checked) on the client, client certificates required
when the server has ``--tls-client-ca``. A failed handshake is one sentence.
"""

from __future__ import annotations

import ssl

__all__ = ["HANDSHAKE_SECONDS", "server_context", "client_context", "describe_tls_error",
           "is_tls"]

#: A client that has not completed its handshake by then is dropped.
HANDSHAKE_SECONDS = 10.0


def server_context(cert: str, key: str, client_ca: str | None,
                   context_class: type[ssl.SSLContext] = ssl.SSLContext) -> ssl.SSLContext:
    """The listener's context; raises ValueError with one sentence if a file does not load.

    ``context_class``: an engine's own (gevent's ``gevent.ssl.SSLContext``, whose
    sockets wait cooperatively).
    """
    context = context_class(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError("cannot load the certificate %s with the key %s: %s"
                         % (cert, key, describe_tls_error(exc))) from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError("cannot load the client CA file %s: %s"
                             % (client_ca, describe_tls_error(exc))) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(cafile: str | None, cert: str | None, key: str | None,
                   ssl_module=ssl) -> ssl.SSLContext:
    """The client's context: the system's CAs (or ``cafile``), host names checked.

    ``ssl_module``: ``gevent.ssl`` for the fleet client, whose sockets are gevent's.
    """
    context = ssl_module.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        context.load_cert_chain(cert, key)
    return context


def describe_tls_error(exc: BaseException) -> str:
    """An ``ssl`` error as a few words: ``certificate verify failed: ...``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "certificate verify failed: %s" % (exc.verify_message or exc.reason)
    if isinstance(exc, ssl.SSLError):
        text = exc.reason or str(exc)
        return text.replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def is_tls(sock: object) -> bool:
    """True for a TLS socket: the standard library's, or gevent's (which is not a subclass)."""
    return isinstance(sock, ssl.SSLSocket) or hasattr(sock, "unwrap")
