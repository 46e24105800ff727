"""TLS, mutual TLS and bearer tokens, with certificates made at test time by openssl."""
from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest

from helpers import start_server, stop_server
from metalearn_client import Client, MetalearnError

SUPPORT, LABELS = np.zeros((4, 1, 28, 28), np.float32), ["a", "b", "a", "b"]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=metalearn test CA", cwd=d)
    for name, extension in [("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                            ("client", "extendedKeyUsage=clientAuth")]:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


def classify(client: Client) -> int:
    return len(client.classify(SUPPORT, LABELS, SUPPORT[:1]).predictions)


def test_bearer_tokens(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("first-secret-token\nsecond-secret-token\n")
    server = start_server(tmp_path, "--auth-tokens-file", str(tokens))
    try:
        with Client(server.target, retries=0) as anonymous:
            assert anonymous.health() == "SERVING"  # probes need no secret
            with pytest.raises(MetalearnError) as error:
                classify(anonymous)
            assert error.value.code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in error.value.details
        with Client(server.target, token="wrong-token", retries=0) as wrong:
            with pytest.raises(MetalearnError) as error:
                wrong.list_models()
            assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
        for token in ("first-secret-token", "second-secret-token"):
            with Client(server.target, token=token) as client:
                assert classify(client) == 1
                assert len(list(client.stream(client.create_task(SUPPORT, LABELS).task_id, [SUPPORT]))) == 1
        assert "secret-token" not in server.log()
    finally:
        stop_server(server)


def test_health_can_require_a_token_too(tmp_path):
    server = start_server(tmp_path, "--auth-tokens", "health-token", "--auth-health",
                          probe=lambda target: Client(target, token="health-token", timeout=1.0))
    try:
        with Client(server.target, retries=0) as anonymous:
            with pytest.raises(MetalearnError) as error:
                anonymous.health()
            assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stop_server(server)


@pytest.mark.parametrize("mutual", [False, True])
def test_tls(tmp_path, pki, mutual):
    """TLS refuses plaintext clients; mutual TLS also refuses clients without a certificate the CA signed."""
    ca = (pki / "ca.pem").read_bytes()
    mine = {"tls_cert": (pki / "client.pem").read_bytes(), "tls_key": (pki / "client.key").read_bytes()}
    flags = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    trusted = {"tls_ca": ca, **(mine if mutual else {})}
    server = start_server(tmp_path, *flags, *(["--tls-client-ca", str(pki / "ca.pem")] if mutual else []),
                          probe=lambda target: Client(target, timeout=1.0, **trusted))
    refused = {"tls_ca": ca} if mutual else {}  # mutual: TLS without a client certificate; else plaintext
    try:
        with Client(server.target, **trusted) as client:
            assert classify(client) == 1
        with Client(server.target, retries=0, timeout=3, **refused) as stranger:
            with pytest.raises(MetalearnError) as error:
                stranger.health()
            assert error.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        stop_server(server)
