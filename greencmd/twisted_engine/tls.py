"""TLS for the Twisted twin: the listener's options, and how a failed handshake is worded.

Twisted's own TLS layer (``TLSMemoryBIOFactory``, the one ``listenSSL`` uses)
wraps the listener whatever the endpoint, TCP or Unix; the session learns of
the finished handshake through ``IHandshakeListener``. Compare
``gevent_engine/tls.py``.
"""

from __future__ import annotations

from twisted.internet import error, ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from ..core.errors import describe_os_error
from ..core.settings import ServerConfig

__all__ = ["tls_options", "ReloadableTLS", "with_tls", "describe_openssl_error"]

_BEGIN = b"-----BEGIN CERTIFICATE-----"


def tls_options(config: ServerConfig) -> ssl.CertificateOptions:
    """Twisted's TLS settings from --tls-cert/--tls-key/--tls-client-ca (TLS 1.2+).

    The certificate file may hold a chain: the server's certificate first, then
    intermediates, which are sent too.
    """
    with open(config.tls_cert, "rb") as cert, open(config.tls_key, "rb") as key:
        chain, secret = cert.read(), key.read()
    blocks = [_BEGIN + block for block in chain.split(_BEGIN)[1:]]
    mine = ssl.PrivateCertificate.loadPEM(blocks[0] + b"\n" + secret)
    options = {"privateKey": mine.privateKey.original, "certificate": mine.original,
               "extraCertChain": [ssl.Certificate.loadPEM(b).original for b in blocks[1:]],
               "raiseMinimumTo": ssl.TLSVersion.TLSv1_2}
    if config.tls_client_ca:
        with open(config.tls_client_ca, "rb") as ca:
            authority = ssl.Certificate.loadPEM(ca.read())
        options.update(verify=True, caCerts=[authority.original], requireCertificate=True)
    return ssl.CertificateOptions(**options)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """Hands Twisted's TLS layer the settings ``factory.tls`` holds now, which a SIGHUP
    may have replaced.

    ``TLSMemoryBIOFactory`` keeps the settings it was given; it asks this object for
    each new connection's OpenSSL connection instead (the interface it documents for
    servers that build their own).
    """

    def __init__(self, factory) -> None:
        self.factory = factory

    def serverConnectionForTLS(self, tls_protocol):  # noqa: N802 (Twisted's name)
        """The OpenSSL connection for a new client, from the settings loaded last."""
        return self.factory.tls.serverConnectionForTLS(tls_protocol)


def with_tls(factory):
    """``factory`` itself, or wrapped in Twisted's TLS layer when it has TLS settings."""
    if factory.tls is None:
        return factory
    return TLSMemoryBIOFactory(ReloadableTLS(factory), False, factory)


def describe_openssl_error(exc: BaseException) -> str:
    """pyOpenSSL's error as the few words the gevent engine logs (``tlsv1 alert unknown ca``)."""
    if isinstance(exc, error.ConnectionLost):  # not clean: a reset, in the others' words
        return "connection reset by peer"
    errors = getattr(exc, "args", [None])[0]
    if isinstance(errors, list) and errors and len(errors[-1]) == 3:
        return str(errors[-1][2]).replace("_", " ").lower()
    return describe_os_error(exc) if isinstance(exc, OSError) else (str(exc) or "closed")
