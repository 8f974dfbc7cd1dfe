"""TLS and mutual TLS on the gRPC port, with certificates made by `openssl` at test time.

TLS: a TLS client is served, a plaintext one is refused. mTLS: a client without a certificate,
or with one of another CA, is refused. A certificate rewritten on disk is served to the next new
connection without a restart. Bad files stop the start with the file named.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.client import main as client
from service.health import READINESS
from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from service.tls import TlsError
from tests.service.service_harness import ServerThread

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return cert, key


def issue(directory: Path, name: str, ca: tuple[Path, Path], server: bool) -> tuple[Path, Path]:
    """A certificate signed by `ca`: for 127.0.0.1/localhost, or a client one."""
    cert, key, request = (directory / f"{name}{ext}" for ext in (".pem", ".key", ".csr"))
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(request),
    )  # fmt: skip
    extensions = directory / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    alt = "subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else ""
    extensions.write_text(f"{alt}extendedKeyUsage={usage}\n")
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(cert),
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca(directory, "ca"), make_ca(directory, "other-ca")
    return {
        "ca": ca,
        "other-ca": other_ca,
        "server": issue(directory, "server", ca, server=True),
        "client": issue(directory, "client", ca, server=False),
        "stranger": issue(directory, "stranger", other_ca, server=False),
        "rotated": issue(directory, "rotated", other_ca, server=True),
    }


def _served_files(tmp_path: Path, pki: dict[str, tuple[Path, Path]]) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki["server"][0], cert)
    shutil.copy(pki["server"][1], key)
    return cert, key


@pytest.fixture
def tls_server(
    tmp_path: Path, service_bundle: Path, pki: dict[str, tuple[Path, Path]]
) -> Iterator[tuple[ServerThread, Path, Path]]:
    cert, key = _served_files(tmp_path, pki)
    running = ServerThread(service_bundle, tls_cert_file=cert, tls_key_file=key).start()
    yield running, cert, key
    running.stop()


def _list(address: str, ca: Path | None, identity: tuple[Path, Path] | None = None) -> str:
    """ListLanguages over a new connection: the model name, or the status code name."""
    if ca is None:
        channel = grpc.insecure_channel(address)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(),
            private_key=identity[1].read_bytes() if identity else None,
            certificate_chain=identity[0].read_bytes() if identity else None,
        )
        channel = grpc.secure_channel(address, credentials)
    with channel:
        try:
            reply = pb_grpc.TranslatorStub(channel).ListLanguages(
                pb.ListLanguagesRequest(), timeout=5
            )
        except grpc.RpcError as error:
            return str(error.code().name)
    return str(reply.model_name) or "?"


def test_tls_client_is_served_and_plaintext_is_refused(
    tls_server: tuple[ServerThread, Path, Path], pki: dict[str, tuple[Path, Path]]
) -> None:
    running, _, _ = tls_server
    assert _list(running.address, pki["ca"][0]) not in {"UNAVAILABLE", "?"}
    assert _list(running.address, None) == "UNAVAILABLE"
    assert _list(running.address, pki["other-ca"][0]) == "UNAVAILABLE"  # untrusted server cert


def test_probes_reach_health_in_plaintext_on_their_own_port(
    tmp_path: Path, service_bundle: Path, pki: dict[str, tuple[Path, Path]]
) -> None:
    cert, key = _served_files(tmp_path, pki)
    running = ServerThread(
        service_bundle, tls_cert_file=cert, tls_key_file=key, health_port=0
    ).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.server.health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(service=READINESS), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as error:  # nothing but health on that port
                pb_grpc.TranslatorStub(channel).ListLanguages(pb.ListLanguagesRequest(), timeout=5)
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert _list(running.address, None) == "UNAVAILABLE"  # the main port stays TLS only
    finally:
        running.stop()


def test_the_client_cli_speaks_tls(
    tls_server: tuple[ServerThread, Path, Path],
    pki: dict[str, tuple[Path, Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    running, _, _ = tls_server
    ca = str(pki["ca"][0])
    assert client(["--address", running.address, "--tls-ca", ca, "--list"]) == 0
    assert "READY" in capsys.readouterr().out


def test_a_rotated_certificate_is_served_to_new_connections(
    tls_server: tuple[ServerThread, Path, Path], pki: dict[str, tuple[Path, Path]]
) -> None:
    running, cert, key = tls_server
    old_ca, new_ca = pki["ca"][0], pki["other-ca"][0]
    assert _list(running.address, new_ca) == "UNAVAILABLE"
    shutil.copy(pki["rotated"][1], key)
    shutil.copy(pki["rotated"][0], cert)
    assert _list(running.address, new_ca) not in {"UNAVAILABLE", "?"}
    assert _list(running.address, old_ca) == "UNAVAILABLE"
    assert running.server.tls is not None and running.server.tls.rotations == 1


def test_a_broken_rotation_keeps_the_served_certificate(
    tls_server: tuple[ServerThread, Path, Path], pki: dict[str, tuple[Path, Path]]
) -> None:
    running, _, key = tls_server
    shutil.copy(pki["rotated"][1], key)  # a key that is not the certificate's
    assert _list(running.address, pki["ca"][0]) not in {"UNAVAILABLE", "?"}
    assert running.server.tls is not None and running.server.tls.rotations == 0


def test_mtls_needs_a_client_certificate_of_the_client_ca(
    tmp_path: Path, service_bundle: Path, pki: dict[str, tuple[Path, Path]]
) -> None:
    cert, key = _served_files(tmp_path, pki)
    running = ServerThread(
        service_bundle, tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=pki["ca"][0]
    ).start()
    try:
        ca = pki["ca"][0]
        assert _list(running.address, ca, pki["client"]) not in {"UNAVAILABLE", "?"}
        assert _list(running.address, ca) == "UNAVAILABLE"
        assert _list(running.address, ca, pki["stranger"]) == "UNAVAILABLE"
        assert _list(running.address, None) == "UNAVAILABLE"
    finally:
        running.stop()


@pytest.mark.parametrize("broken", ["missing cert", "missing key", "wrong key", "bad ca"])
def test_bad_files_stop_the_start_naming_the_file(
    tmp_path: Path, service_bundle: Path, pki: dict[str, tuple[Path, Path]], broken: str
) -> None:
    cert, key = _served_files(tmp_path, pki)
    ca: Path | None = None
    named = {"missing cert": cert, "missing key": key, "wrong key": key, "bad ca": tmp_path / "ca"}
    if broken == "missing cert":
        cert.unlink()
    elif broken == "missing key":
        key.unlink()
    elif broken == "wrong key":
        shutil.copy(pki["client"][1], key)
    else:
        ca = tmp_path / "ca"
        ca.write_text("not a certificate")
    running = ServerThread(
        service_bundle, tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=ca
    )
    with pytest.raises(TlsError, match=str(named[broken])):
        running.start()
