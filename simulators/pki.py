"""Certificate authorities and certificates made for a test or a simulated fleet, with
`cryptography` (a test dependency: `make setup` installs it).

A fleet's PKI as systemd/nginx/README.md describes it: a CA that issues the node's server
certificate, a fleet CA and an operator CA that issue client certificates, and, for the
refusals, CAs nobody trusts (one of them with the operator CA's very name).
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

# Certificates are valid from a day before now (clock skew between hosts) for a week.
VALID_BEFORE = datetime.timedelta(days=1)
VALID_FOR = datetime.timedelta(days=7)


def name(common_name: str, organisation: str = "Hanjullo") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: bytes = b""  # the intermediate CAs' certificates a client sends with it, as PEM

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem + self.chain)
        key.write_bytes(self.key_pem)
        return cert, key


class Authority:
    """A CA that issues leaf certificates: self-signed, or an intermediate of `parent`.

    `path_length` None is a CA without a limit on the CAs below it, as a fleet's CA often
    is: the site must not let such a CA's sub-CA hand out roles."""

    def __init__(
        self,
        subject: x509.Name,
        path_length: int | None = 0,
        parent: Authority | None = None,
    ) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        issuer, signer = (subject, self.key)
        if parent is not None:
            issuer, signer = parent.cert.subject, parent.key
        self.cert: x509.Certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - VALID_BEFORE)
            .not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(signer, hashes.SHA256())
        )

        # What a client of an intermediate sends beside its own certificate.
        self.chain: bytes = b"" if parent is None else self.cert_pem + parent.chain

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, server: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - VALID_BEFORE)
            .not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(common_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return Issued(builder.sign(self.key, hashes.SHA256()), key, self.chain)
