"""TLS settings for every engine and the client, with the standard library's ``ssl``.

Secure defaults: TLS 1.2 or newer, the system's cipher choice, certificates
verified (and host names checked) on the client, client certificates required
when the server has ``--tls-client-ca``. A failed handshake is one sentence.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TypeVar

from .logs import log
from .settings import ServerConfig

__all__ = ["HANDSHAKE_SECONDS", "server_context", "reload_tls", "client_context",
           "describe_tls_error",
           "is_tls", "client_tls_failure", "server_handshake_failure", "PLAIN_HINT",
           "REFUSED_CERT_HINT", "TLS_RESET", "NO_REPLY", "no_reply"]

#: What a plain client is told when a server closes without a word: TLS ports do that.
PLAIN_HINT = " (a TLS port does that to a client without --tls)"
#: And a TLS client: with TLS 1.3 a refused client certificate is learnt only then.
REFUSED_CERT_HINT = (" (a server with mutual TLS does that when it refuses the client "
                     "certificate: give --cert and --key signed by the CA it trusts)")
#: A TLS client reset before any reply: TLS 1.3 refuses a client certificate after the
#: handshake, and the reset of a server that closed with our request unread can
#: overtake its alert.
TLS_RESET = "reset the connection without a reply" + REFUSED_CERT_HINT
#: What a client says of a server that closed before any reply (see no_reply()).
NO_REPLY = "closed the connection without a reply"


def no_reply(tls: bool) -> str:
    """The no-reply sentence, with why a server may close on such a client: a TLS port
    closes on a plain client, a mutual-TLS server on a refused client certificate (also
    what OpenSSL's EOF after a completed handshake means, never "not TLS")."""
    return NO_REPLY + (REFUSED_CERT_HINT if tls else PLAIN_HINT)


#: Client side: OpenSSL's reason -> what it likely means, and the option that fixes it.
_CLIENT_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate: give "
                                         "--cert and --key",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the CA of this client certificate: "
                              "give --cert and --key signed by the CA it trusts",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused this client certificate: give --cert "
                                   "and --key signed by the CA it trusts",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS: try without --tls and --cafile",
    "UNEXPECTED_EOF_WHILE_READING": "the server closed the TLS connection without a word: "
                                    "it may not speak TLS (try without --tls and --cafile), "
                                    "or want a client certificate (--cert and --key)",
}
#: Server side: the few words of a failed handshake -> what the client likely did.
_SERVER_REASONS = {
    "wrong version number": "the client does not speak TLS (a plain client, without --tls?)",
    "http request": "the client sent plain HTTP, not TLS",
    "peer did not return a certificate": "the client sent no certificate (mutual TLS: it "
                                         "needs --cert and --key)",
}

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


Settings = TypeVar("Settings")


def reload_tls(config: ServerConfig, load: Callable[[], Settings], current: Settings) -> Settings:
    """The engine's TLS settings made again by ``load`` from the files (on SIGHUP: a
    renewed certificate), or ``current`` if the files do not load; one log line either way.

    Connections already open keep the settings they began with.
    """
    try:
        # The standard library's load first: its failure is one sentence in every engine.
        server_context(config.tls_cert, config.tls_key, config.tls_client_ca)
        settings = load()
    except (ValueError, OSError) as exc:
        log("Cannot reload TLS: %s; new connections still get the certificate loaded before"
            % exc, event="tls_reload_failed", level="error")
        return current
    log("TLS certificate reloaded from %s" % config.tls_cert, event="tls_reloaded")
    return settings


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
        text = getattr(exc, "reason", None) or str(exc)  # made in Python, it may have none
        return text.replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def is_tls(sock: object) -> bool:
    """True for a TLS socket: the standard library's, or gevent's (which is not a subclass).

    Asked of the type: a closed gevent socket answers any attribute with EBADF.
    """
    return isinstance(sock, ssl.SSLSocket) or hasattr(type(sock), "unwrap")


def client_tls_failure(exc: BaseException) -> str:
    """A client's failed TLS exchange as one phrase naming the likely cause and the fix."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if "CA cert" in (exc.verify_message or ""):  # Python 3.13+ checks the CA strictly
            return ("%s: make the CA certificate again with keyUsage=critical,keyCertSign and "
                    "basicConstraints=critical,CA:TRUE" % describe_tls_error(exc))
        return ("%s: give --cafile with the CA that signed the server's certificate, or "
                "connect to a name the certificate holds" % describe_tls_error(exc))
    reason = getattr(exc, "reason", None) or ""
    if isinstance(exc, ssl.SSLEOFError):
        reason = "UNEXPECTED_EOF_WHILE_READING"
    hint = _CLIENT_REASONS.get(reason)
    return "%s (%s)" % (hint, describe_tls_error(exc)) if hint else describe_tls_error(exc)


def server_handshake_failure(words: str) -> str:
    """The server log's reason for a failed handshake: the likely cause, then OpenSSL's words."""
    cause = _SERVER_REASONS.get(words)
    return "%s (%s)" % (cause, words) if cause else words
