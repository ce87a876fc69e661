"""Local CA + loopback server certificate, made once per data dir and reused.

Several server processes on one data dir (the multi-node set-up of docs/multi_node.md) must
present certificates from the same CA, or a client trusting one node's CA bundle would refuse
the others. So the CA is made once, under a file lock (concurrent first starts wait for the
winner), and is never replaced while its key is still there: a missing or expiring leaf is
re-issued from the existing CA instead of minting a new CA that running clients do not trust.

The server side follows Mozilla's "intermediate" profile (see :func:`harden`): TLS 1.2+, AEAD
suites only on 1.2, key exchange on X25519/P-256/P-384, and a local leaf of LEAF_LIFETIME
(re-issued at start when it nears expiry, or when an older, longer-lived leaf is found).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import fcntl
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


#: A leaf certificate this close to expiry is re-issued (from the same CA) at start.
RENEW_BEFORE = dt.timedelta(days=30)
#: Lifetime of the local leaf (Mozilla intermediate: 90 days; it used to be 825).
LEAF_LIFETIME = dt.timedelta(days=90)

#: Mozilla "intermediate" TLS 1.2 suites: ECDHE with AES-GCM or ChaCha20-Poly1305, no CBC,
#: no static RSA, no DHE (no finite-field groups are offered). TLS 1.3 suites are all AEAD.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
#: Key-exchange groups, in preference order.
TLS_GROUPS = "X25519:P-256:P-384"
_SSL_CTRL_SET_GROUPS_LIST = 92  # OpenSSL's SSL_CTX_set1_groups_list is this ctrl (a macro)

log = logging.getLogger("mock_server.tls")


def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Apply the intermediate profile to a server context (uvicorn's or a user's cert)."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if not _set_groups(ctx, TLS_GROUPS):
        # one group only, but still within the profile
        log.warning("cannot restrict TLS groups to %s; offering P-256 only", TLS_GROUPS)
        ctx.set_ecdh_curve("prime256v1")
    return ctx


def _set_groups(ctx: ssl.SSLContext, groups: str) -> bool:
    """``SSL_CTX_set1_groups_list`` on the context's ``SSL_CTX``.

    Python's ssl module has no binding for it before 3.15 (``set_ecdh_curve`` sets one
    curve), so it is called through ctypes in the libssl the ``_ssl`` module is linked to.
    The ``SSL_CTX*`` is the first field after the object header of CPython's context object.
    """
    setter = getattr(ctx, "set_groups", None)
    if setter is not None:  # Python 3.15+
        setter(groups)
        return True
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        ctrl = lib.SSL_CTX_ctrl
    except (OSError, AttributeError):
        return False
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    ctrl.restype = ctypes.c_long
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ssl_ctx:
        return False
    return bool(ctrl(ssl_ctx, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()))
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ekodb reference local CA")])


def ensure_local_ca(data_dir: Path) -> TlsFiles:
    """Create `<data_dir>/tls/{ca.pem,ca.key,server.pem,server.key}` if missing."""
    tls_dir = data_dir / "tls"
    files = TlsFiles(tls_dir / "server.pem", tls_dir / "server.key", tls_dir / "ca.pem")
    if _usable(files):
        return files
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Several servers may start on one data dir at once: one makes the CA, the others wait.
    with open(tls_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _usable(files):
            return files
        ca = _load_ca(tls_dir, files)
        if ca is None:
            _make_ca(tls_dir, files)
        else:
            _issue_leaf(files, *ca)
    return files


def _usable(files: TlsFiles) -> bool:
    """All three files exist (each is written atomically) and the leaf is not expiring."""
    assert files.ca is not None
    if not (files.cert.exists() and files.key.exists() and files.ca.exists()):
        return False
    try:
        leaf = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except (OSError, ValueError):
        return False
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    if lifetime > LEAF_LIFETIME + dt.timedelta(days=1):  # an 825-day leaf of an older version
        return False
    return leaf.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) > RENEW_BEFORE


def _load_ca(
    tls_dir: Path, files: TlsFiles
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The existing CA, when both its certificate and key are there and still valid."""
    assert files.ca is not None
    try:
        cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
        key = load_pem_private_key((tls_dir / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) <= RENEW_BEFORE:
        return None
    return cert, key


def _make_ca(tls_dir: Path, files: TlsFiles) -> None:
    assert files.ca is not None
    files.ca.unlink(missing_ok=True)  # a stale CA cert must not pair with the new leaf
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = CA_NAME
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(tls_dir / "ca.key", _pem_key(ca_key))
    # the leaf before ca.pem: a concurrent reader sees all three files only once all are done
    _issue_leaf(files, ca_cert, ca_key)
    _write_public(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM))


def _issue_leaf(files: TlsFiles, ca_cert: x509.Certificate,
                ca_key: ec.EllipticCurvePrivateKey) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    ca_name = ca_cert.subject
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + LEAF_LIFETIME)
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(files.key, _pem_key(leaf_key))
    _write_public(files.cert, leaf.public_bytes(serialization.Encoding.PEM))
