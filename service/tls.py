"""TLS and mutual TLS for the gRPC port, with certificates rotated on disk picked up live.

    TRANSLATOR_TLS_CERT_FILE + TRANSLATOR_TLS_KEY_FILE   TLS: clients verify the server
    + TRANSLATOR_TLS_CLIENT_CA_FILE                      mTLS: clients need a certificate of this CA

gRPC asks `CertificateFiles.fetch` before every new connection's handshake; when a file has
changed on disk (cert-manager renewing a Secret, say), the new pair is checked and served to new
connections, while connections already open keep theirs. A rotated pair that does not check out
is logged and the old one stays. At startup a missing file, a key that does not match its
certificate, or an unreadable CA stops the server with one line naming the file.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be served; the message names the file."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsError(f"{path}: cannot read ({error.strerror})") from None


def _check(cert: Path, key: Path, client_ca: Path | None) -> None:
    """Load the files as OpenSSL would (the key must match the certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise TlsError(f"{key}: not the key of {cert}, or not PEM ({error.reason})") from None
    except OSError as error:
        missing = cert if not cert.is_file() else key
        raise TlsError(f"{missing}: cannot read ({error.strerror})") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as error:
            raise TlsError(f"{client_ca}: not a readable PEM CA certificate ({error})") from None


class CertificateFiles:
    """The server's certificate files, reloaded when they change.

    Args:
        cert: PEM certificate chain of the server.
        key: PEM private key of `cert`.
        client_ca: PEM CA certificates that client certificates must chain to (mTLS), or None.

    Raises:
        TlsError: a file is missing or unreadable, or the key does not match the certificate.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.paths = (cert, key, client_ca)
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self.initial = self._configuration()
        self.rotations = 0

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        return tuple(
            (p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else (0, 0)
            for p in self.paths
            if p is not None
        )

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        cert, key, client_ca = self.paths
        _check(cert, key, client_ca)
        roots = None if client_ca is None else _read(client_ca)
        return grpc.ssl_server_certificate_configuration([(_read(key), _read(cert))], roots)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Before each new connection: the new configuration if a file changed, else None."""
        with self._lock:
            try:  # called from gRPC's core: nothing may escape
                stamp = self._stamps()
                if stamp == self._stamp:
                    return None
                self._stamp = stamp
                configuration = self._configuration()
            except (TlsError, OSError) as error:
                log.error("rotated TLS files refused, still serving the previous ones: %s", error)
                return None
            self.rotations += 1
            log.info("TLS certificate reloaded from %s", self.paths[0])
            return configuration

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.initial,
            self.fetch,
            require_client_authentication=self.paths[2] is not None,
        )
