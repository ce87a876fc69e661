"""Every node on one data dir presents a certificate from the same local CA."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography import x509

from mock_server.tls import ensure_local_ca


def issuer_key_id(cert_path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    return aki.key_identifier


def test_concurrent_first_starts_make_one_ca(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: ensure_local_ca(tmp_path), range(8)))
    assert results[0].ca is not None
    cas = {r.ca.read_bytes() for r in results if r.ca is not None}
    assert len(cas) == 1
    ca = x509.load_pem_x509_certificate(results[0].ca.read_bytes())
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert issuer_key_id(results[0].cert) == ski


def test_a_missing_leaf_is_reissued_from_the_same_ca(tmp_path: Path) -> None:
    first = ensure_local_ca(tmp_path)
    assert first.ca is not None
    ca_before = first.ca.read_bytes()
    leaf_before = first.cert.read_bytes()
    first.cert.unlink()
    first.key.unlink()
    again = ensure_local_ca(tmp_path)
    assert again.ca is not None
    assert again.ca.read_bytes() == ca_before  # clients trusting the CA keep working
    assert again.cert.read_bytes() != leaf_before
    assert issuer_key_id(again.cert) == issuer_key_id(Path(str(first.cert)))


def test_without_the_ca_key_a_fresh_ca_is_made(tmp_path: Path) -> None:
    first = ensure_local_ca(tmp_path)
    assert first.ca is not None
    ca_before = first.ca.read_bytes()
    (tmp_path / "tls" / "ca.key").unlink()
    first.cert.unlink()
    again = ensure_local_ca(tmp_path)
    assert again.ca is not None and again.ca.read_bytes() != ca_before
