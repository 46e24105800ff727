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
    server = start_server(tmp_path, "--auth-tokens", "health-probe-token-16", "--auth-health",
                          probe=lambda target: Client(target, token="health-probe-token-16", timeout=1.0))
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


def refused_start(tmp_path: Path, *flags: str, env: dict[str, str] | None = None, port: int = 0) -> str:
    """Start a server that must refuse to start: its one error line (exit status 2, no traceback)."""
    import os
    import sys

    from helpers import free_port

    done = subprocess.run([sys.executable, "-m", "metalearn_server", "--host", "127.0.0.1", "--port",
                           str(port or free_port()), "--metrics-port", "0", *flags], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


@pytest.mark.parametrize("content", ["", "\n   \n", "# only a comment\n\n"])
def test_a_tokens_file_without_tokens_refuses_to_start(tmp_path, content):
    """Fail closed: before, an empty file started the server with no authentication at all."""
    tokens = tmp_path / "tokens"
    tokens.write_text(content)
    assert "holds no token, so the server would run without authentication" in refused_start(
        tmp_path, "--auth-tokens-file", str(tokens))


def test_a_malformed_tokens_line_refuses_to_start_without_showing_it(tmp_path):
    tokens = tmp_path / "tokens"
    for bad in ("short-token", "has a space inside-it", "naïve-non-ascii-token-123"):
        tokens.write_text(f"# ops team\n\nfirst-secret-token-01\n{bad}\n")
        error = refused_start(tmp_path, "--auth-tokens-file", str(tokens))
        assert "line 4 of" in error and "at least 16 characters" in error and bad not in error
    assert "token 1 of METALEARN_AUTH_TOKENS" in refused_start(tmp_path, env={"METALEARN_AUTH_TOKENS": "tiny"})


def test_a_comment_line_never_authenticates(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# rotated-out-token-2026-01\n  # indented-comment-token-xyz  \nthe-one-real-token-2026\n")
    server = start_server(tmp_path, "--auth-tokens-file", str(tokens))
    try:
        for presented in ("# rotated-out-token-2026-01", "rotated-out-token-2026-01", "# indented-comment-token-xyz"):
            with Client(server.target, token=presented, retries=0) as client:
                with pytest.raises(MetalearnError) as error:
                    client.list_models()
                assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
        with Client(server.target, token="the-one-real-token-2026") as client:
            assert classify(client) == 1
    finally:
        stop_server(server)


def test_calls_without_a_token_are_refused_before_their_message_is_read(tmp_path):
    """48 anonymous 19 MB messages: refused from the metadata alone, so the server parses none of them
    (before, each was parsed first and the server's memory rose by over half a gigabyte)."""
    import threading

    from test_hostile_callers import items
    from metalearn.v1 import fewshot_pb2, fewshot_pb2_grpc

    tokens = tmp_path / "tokens"
    tokens.write_text("a-long-enough-secret-token\n")
    server = start_server(tmp_path, "--auth-tokens-file", str(tokens))
    big = fewshot_pb2.ClassifyRequest(support=fewshot_pb2.SupportSet(items=items(2048), labels=["a", "b"] * 1024),
                                      queries=items(4096))
    idle = peak_rss(server)
    codes: list[grpc.StatusCode] = []

    def anonymous() -> None:
        with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
            for _ in range(3):
                try:
                    fewshot_pb2_grpc.FewShotServiceStub(channel).Classify(big, timeout=60)
                except grpc.RpcError as error:
                    codes.append(error.code())

    try:
        callers = [threading.Thread(target=anonymous) for _ in range(16)]
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join()
        grown = peak_rss(server) - idle
    finally:
        stop_server(server)
    assert codes and set(codes) <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE}, set(codes)
    assert grown < 300, grown  # MB; before: 550


def peak_rss(server) -> float:
    """The server's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_startup_errors_name_their_cause(tmp_path, pki):
    # A certificate with another certificate's key: gRPC itself says only "Failed to bind to address".
    assert "are not a certificate and its private key" in refused_start(
        tmp_path, "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "client.key"))
    # --redis-url without the redis package ([redis] extra): before, a ModuleNotFoundError traceback.
    shadow = tmp_path / "shadow" / "redis"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'redis'\", name='redis')\n")
    assert "--redis-url needs the redis package" in refused_start(
        tmp_path, "--redis-url", "redis://127.0.0.1:1/0", env={"PYTHONPATH": str(tmp_path / "shadow")})
    assert "is not a folder (--model-repository)" in refused_start(tmp_path, "--model-repository",
                                                                   str(tmp_path / "nowhere"))
    assert "cannot be read" in refused_start(tmp_path, "--auth-tokens-file", str(tmp_path / "missing"))


def test_a_second_server_on_a_taken_port_refuses_to_start(tmp_path):
    """gRPC turns SO_REUSEPORT on by default: before, a second server on the port started silently and the
    kernel split the connections between the two.  Now only servers that all ask (--reuse-port) share it."""
    first = start_server(tmp_path)
    try:
        error = refused_start(tmp_path, port=first.port)
        assert f"cannot start: cannot listen on 127.0.0.1:{first.port}" in error and "--reuse-port" in error
        with Client(first.target) as client:
            assert client.health() == "SERVING" and classify(client) == 1  # the first one never noticed
    finally:
        stop_server(first)
    shared = start_server(tmp_path, "--reuse-port")
    try:
        second = start_server(tmp_path, "--reuse-port", port=shared.port)
        try:
            assert second.process.poll() is None and shared.process.poll() is None
        finally:
            stop_server(second)
    finally:
        stop_server(shared)


def test_metrics_bind_where_grpc_does(tmp_path):
    """--host 127.0.0.2 serves metrics on 127.0.0.2 only (before: every interface), unless --metrics-host says."""
    import urllib.request

    def answers(host: str, port: int) -> bool:
        try:
            urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=3).read()
            return True
        except OSError:
            return False

    for flags, listening, closed in ([[], "127.0.0.2", "127.0.0.1"],
                                     [["--metrics-host", "127.0.0.3"], "127.0.0.3", "127.0.0.2"]):
        server = start_server(tmp_path, "--host", "127.0.0.2", *flags,
                              probe=lambda target: Client(target.replace("127.0.0.1", "127.0.0.2"), timeout=1.0))
        try:
            assert answers(listening, server.metrics_port) and not answers(closed, server.metrics_port)
        finally:
            stop_server(server)
