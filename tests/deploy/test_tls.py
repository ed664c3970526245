"""TLS from Settings: a server that requires client certificates, certificates made with openssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from chronos.client import Client
from chronos.config import load_settings
from chronos.connection import connect
from chronos.embedded import EmbeddedServer
from chronos.errors import ChronosError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=chronos-test-ca",
             "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}-key.pem",
                 "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                 "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=d)
    return d


async def test_mutual_tls_from_settings(pki: Path, tmp_path: Path):
    args = ["--tls", "--tlscert", str(pki / "server.pem"), "--tlskey", str(pki / "server-key.pem"),
            "--tlscacert", str(pki / "ca.pem"), "--tlsverify"]
    with EmbeddedServer(store_dir=tmp_path / "js", extra_args=args) as server:
        url = f"tls://127.0.0.1:{server.port}"
        good = load_settings(overrides={"namespace": "tls", "nats": {
            "url": url, "tls_ca": str(pki / "ca.pem"), "tls_cert": str(pki / "client.pem"),
            "tls_key": str(pki / "client-key.pem")}}, read_env=False)
        async with await Client.connect(good) as client:
            assert client.conn.nc.is_connected
            assert (await client.list()).total == 0
        # Without a client certificate the server refuses the handshake.
        no_cert = load_settings(overrides={"nats": {"url": url, "tls_ca": str(pki / "ca.pem"),
                                                    "connect_timeout": 1.0}}, read_env=False)
        with pytest.raises(ChronosError):
            await connect(no_cert)
