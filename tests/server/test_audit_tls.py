"""TLS meets Mozilla's "intermediate" profile (issue 13, item 14), checked with real
handshakes against the session server."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from mock_server import tls
from mock_server.pytest_plugin import ServerInfo
from tests.server.conftest import tls_context


def handshake(info: ServerInfo, ctx: ssl.SSLContext) -> tuple[str, str]:
    """(protocol, cipher) of a completed handshake; raises ssl.SSLError if refused."""
    host, port = info.url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as conn:
        cipher = conn.cipher()
        assert cipher is not None
        return str(conn.version()), cipher[0]


def tls12(info: ServerInfo) -> ssl.SSLContext:
    ctx = tls_context(info)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384",
                                    "ECDHE-ECDSA-AES128-SHA256"])
def test_cbc_suites_are_refused_on_tls12(ekodb_server: ServerInfo, cipher: str) -> None:
    ctx = tls12(ekodb_server)
    ctx.set_ciphers(cipher)
    with pytest.raises(ssl.SSLError):
        handshake(ekodb_server, ctx)


def test_tls12_negotiates_an_aead_suite(ekodb_server: ServerInfo) -> None:
    version, cipher = handshake(ekodb_server, tls12(ekodb_server))
    assert version == "TLSv1.2"
    assert "GCM" in cipher or "CHACHA20" in cipher


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls11_is_refused(ekodb_server: ServerInfo) -> None:
    ctx = tls_context(ekodb_server)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        handshake(ekodb_server, ctx)


@pytest.mark.parametrize(("curve", "accepted"), [("prime256v1", True), ("secp384r1", True),
                                                 ("secp521r1", False)])
def test_key_exchange_groups(ekodb_server: ServerInfo, curve: str, accepted: bool) -> None:
    """A TLS 1.3 client offering only one group: P-521 is outside the profile (X25519 is
    what default clients offer first, tested by every other test). On TLS 1.2 the offered
    groups also bound the certificate's curve (P-256), so 1.3 tests the key exchange alone."""
    ctx = tls_context(ekodb_server)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ecdh_curve(curve)  # on a client: the only group offered
    if accepted:
        assert handshake(ekodb_server, ctx)[0] == "TLSv1.3"
    else:
        with pytest.raises(ssl.SSLError):
            handshake(ekodb_server, ctx)


def test_local_leaf_is_short_lived(ekodb_server: ServerInfo) -> None:
    leaf = x509.load_pem_x509_certificate(
        (ekodb_server.data_dir / "tls" / "server.pem").read_bytes())
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=91)


def test_an_older_long_lived_leaf_is_reissued_from_the_same_ca(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls, "LEAF_LIFETIME", dt.timedelta(days=825))
    files = tls.ensure_local_ca(tmp_path)
    assert files.ca is not None
    ca_before = files.ca.read_bytes()
    monkeypatch.undo()
    tls.ensure_local_ca(tmp_path)
    leaf = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=91)
    assert files.ca.read_bytes() == ca_before  # running clients keep trusting it
