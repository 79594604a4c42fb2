"""TLS, mutual TLS and the client token against a real tritonserver, with real handshakes.

The certificates come from a throwaway CA made per test module (`certificates.py`). Every
security failure must fail fast (no 60 s of retries), say what is wrong, and exit 2 in the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from certificates import CertificateAuthority, Pair
from click.testing import CliRunner

from ubm import AuthenticationError, TlsConfig, TlsError, UbmClient
from ubm.cli import EXIT_OK, EXIT_SERVER_FAILED
from ubm_build import cli as build_cli
from ubm_build.serving import server
from ubm_build.serving.settings import TlsSettings

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-of-the-tests-0123456789"
FAST_S = 10.0
"""A security failure must come well before the default 60 s retry deadline."""


class Certificates:
    def __init__(self, directory: Path) -> None:
        self.ca = CertificateAuthority(directory / "ca")
        self.other_ca = CertificateAuthority(directory / "other", "another CA")
        self.server: Pair = self.ca.issue("server", server=True)
        self.client: Pair = self.ca.issue("client", server=False)
        self.stranger: Pair = self.other_ca.issue("stranger", server=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def mtls_server(tiny_repository, certs, tmp_path_factory) -> Iterator[server.TritonServer]:
    """Mutual TLS and a token; bound to all interfaces, so HTTP must fall back to loopback."""
    tls = TlsSettings(cert=certs.server.cert, key=certs.server.key, client_ca=certs.ca.cert)
    with server.TritonServer(
        tiny_repository,
        workdir=tmp_path_factory.mktemp("mtls"),
        ports=server.Ports.free(),
        host="0.0.0.0",
        tls=tls,
        token=TOKEN,
    ) as triton:
        yield triton


@pytest.fixture(scope="module")
def tls_server(tiny_repository, certs, tmp_path_factory) -> Iterator[server.TritonServer]:
    """TLS without client certificates, no token."""
    tls = TlsSettings(cert=certs.server.cert, key=certs.server.key)
    with server.TritonServer(
        tiny_repository,
        workdir=tmp_path_factory.mktemp("tls"),
        ports=server.Ports.free(),
        tls=tls,
    ) as triton:
        yield triton


def url_of(triton: server.TritonServer) -> str:
    return f"localhost:{triton.ports.grpc}"


def client_tls(certs: Certificates, *, root: Path | None = None, pair: Pair | None = None):
    pair = pair or certs.client
    return TlsConfig(
        root_certificates=root or certs.ca.cert,
        private_key=pair.key,
        certificate_chain=pair.cert,
    )


def one_record() -> dict:
    return {
        "id": "u1",
        "events": [{"ts": 1511544070, "type": "view", "item": "1", "category": "2"}],
    }


def timed_failure(make_client, error_type) -> tuple[Exception, float]:
    started = time.monotonic()
    with pytest.raises(error_type) as raised, make_client() as client:
        client.score([one_record()])
    return raised.value, time.monotonic() - started


def test_a_trusted_client_with_certificate_and_token_scores(mtls_server, certs):
    with UbmClient(url_of(mtls_server), tls=client_tls(certs), token=TOKEN) as client:
        (score,) = client.score([one_record()])
        assert 0.0 <= score.purchase_probability <= 1.0
        assert client.metadata()["name"] == "ubm"


def test_without_the_token_authentication_fails_fast(mtls_server, certs):
    for token in (None, "wrong-token-but-long-enough"):
        error, seconds = timed_failure(
            lambda t=token: UbmClient(url_of(mtls_server), tls=client_tls(certs), token=t),
            AuthenticationError,
        )
        assert "authentication" in str(error)
        assert TOKEN not in str(error)
        assert seconds < FAST_S


def test_health_stays_open_without_the_token(mtls_server, certs):
    with UbmClient(url_of(mtls_server), tls=client_tls(certs)) as client:
        assert client.is_ready()


def test_a_client_that_does_not_trust_the_ca_fails_fast(mtls_server, certs):
    error, seconds = timed_failure(
        lambda: UbmClient(
            url_of(mtls_server), tls=client_tls(certs, root=certs.other_ca.cert), token=TOKEN
        ),
        TlsError,
    )
    assert "not trusted" in str(error) or "CERTIFICATE_VERIFY_FAILED" in str(error)
    assert seconds < FAST_S


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_server, certs):
    error, seconds = timed_failure(
        lambda: UbmClient(
            url_of(mtls_server), tls=TlsConfig(root_certificates=certs.ca.cert), token=TOKEN
        ),
        TlsError,
    )
    assert "client certificate" in str(error)
    assert seconds < FAST_S


def test_mutual_tls_refuses_a_certificate_from_another_ca(mtls_server, certs):
    error, seconds = timed_failure(
        lambda: UbmClient(
            url_of(mtls_server), tls=client_tls(certs, pair=certs.stranger), token=TOKEN
        ),
        TlsError,
    )
    assert "client certificate" in str(error)
    assert seconds < FAST_S


def test_a_plaintext_client_is_told_the_server_speaks_tls(tls_server):
    error, seconds = timed_failure(lambda: UbmClient(url_of(tls_server)), TlsError)
    assert "speaks TLS" in str(error)
    assert seconds < FAST_S


def test_http_listens_on_loopback_only_when_tls_is_on(mtls_server, tmp_path):
    assert mtls_server.http_host == "127.0.0.1"
    with urllib.request.urlopen(
        f"http://127.0.0.1:{mtls_server.ports.http}/v2/health/ready", timeout=5
    ) as response:
        assert response.status == 200
    twin = server.TritonServer(
        mtls_server.model_repository, workdir=tmp_path, host="0.0.0.0", tls=mtls_server.tls
    )
    flags = twin.command("admin")
    assert "--http-address=127.0.0.1" in flags and "--grpc-address=0.0.0.0" in flags


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "ubm-client"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_the_cli_scores_over_tls_with_root_cert_and_token_from_the_environment(
    tls_server, mtls_server, certs, tmp_path
):
    records = tmp_path / "records.jsonl"
    records.write_text(
        "\n".join(
            f'{{"id": "u{i}", "events": [{{"ts": 1511544070, "type": "view", "item": "1"}}]}}'
            for i in range(5)
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    done = run_cli(
        "score",
        str(records),
        "--url",
        url_of(tls_server),
        "--root-cert",
        str(certs.ca.cert),
        "-o",
        str(out),
        "-q",
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert len(out.read_text().splitlines()) == 5

    mutual = [
        "--url",
        url_of(mtls_server),
        "--root-cert",
        str(certs.ca.cert),
        "--client-cert",
        str(certs.client.cert),
        "--client-key",
        str(certs.client.key),
    ]
    done = run_cli("score", str(records), *mutual, "-o", str(out), "-q", env={"UBM_TOKEN": TOKEN})
    assert done.returncode == EXIT_OK, done.stderr

    started = time.monotonic()
    refused = run_cli("score", str(records), *mutual, "-o", str(out), env={"UBM_TOKEN": ""})
    assert refused.returncode == EXIT_SERVER_FAILED
    assert "authentication" in refused.stderr
    assert time.monotonic() - started < 60

    untrusted = run_cli(
        "score",
        str(records),
        "--url",
        url_of(tls_server),
        "--root-cert",
        str(certs.other_ca.cert),
        "-o",
        str(out),
    )
    assert untrusted.returncode == EXIT_SERVER_FAILED
    assert "TlsError" in untrusted.stderr and "not trusted" in untrusted.stderr


def test_serve_reads_its_config_file_and_echoes_it_without_the_token(
    tiny_repository, certs, tmp_path, monkeypatch
):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    ports = server.Ports.free()
    config = tmp_path / "serve.toml"
    config.write_text(
        f'repository = "{tiny_repository}"\nrun_dir = "run"\n'
        f"grpc_port = {ports.grpc}\nhttp_port = {ports.http}\nmetrics_port = {ports.metrics}\n"
        f'tls_cert = "{certs.server.cert}"\ntls_key = "{certs.server.key}"\n'
        'token_file = "token"\n'
    )
    monkeypatch.delenv("UBM_TOKEN", raising=False)
    runner = CliRunner()
    started = runner.invoke(build_cli.main, ["serve", "--config", str(config), "--detach"])
    try:
        assert started.exit_code == 0, started.output
        assert f"token: required (from file {token_file})" in started.output
        assert f"grpc: 127.0.0.1:{ports.grpc}" in started.output
        assert TOKEN not in started.output
        tls = TlsConfig(root_certificates=certs.ca.cert)
        with UbmClient(f"localhost:{ports.grpc}", tls=tls, token=TOKEN) as client:
            assert client.score([one_record()])
        run_dir = tmp_path / "run"
        assert all(p.stat().st_mode & 0o077 == 0 for p in [run_dir, *run_dir.rglob("*")])
    finally:
        stopped = runner.invoke(build_cli.main, ["stop", "--run-dir", str(tmp_path / "run")])
    assert stopped.exit_code == 0, stopped.output
