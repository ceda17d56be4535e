"""Throwaway certificates for the TLS tests: a CA, and server and client certificates it signs.

Made fresh for each test session with ``cryptography``; EC P-256 keys, so that making them is quick.
The server certificate names ``localhost`` and ``127.0.0.1``, the addresses the tests dial.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate file, and what is needed to sign with it."""

    cert: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _builder(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def make_authority(folder: Path, name: str) -> Authority:
    """A self-signed CA certificate, written to ``folder/name.pem``."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        _builder(name, _name(name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{name}.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Authority(path, certificate, key)


def issue(authority: Authority, folder: Path, name: str, *, server: bool) -> Pair:
    """A certificate for ``name`` signed by ``authority``: a server's (localhost, 127.0.0.1) or a client's."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(name, authority.certificate.subject, key.public_key()).add_extension(
        x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
        ),
        critical=False,
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    certificate = builder.sign(authority.key, hashes.SHA256())
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    pair.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return pair


@dataclass(frozen=True)
class Certificates:
    """Everything the TLS tests use, in one folder."""

    ca: Path
    server: Pair
    client: Pair
    # Signed by a CA nobody trusts: what an outsider's certificate looks like.
    stranger: Pair


def make_certificates(folder: Path) -> Certificates:
    ca = make_authority(folder, "test-ca")
    other = make_authority(folder, "other-ca")
    return Certificates(
        ca=ca.cert,
        server=issue(ca, folder, "server", server=True),
        client=issue(ca, folder, "client", server=False),
        stranger=issue(other, folder, "stranger", server=False),
    )
