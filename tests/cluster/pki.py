"""The certificates and kubeconfigs of the one-node cluster (issue 13).

One CA signs everything, as `hack/local-up-cluster.sh` does: the API server's serving certificate,
a client certificate per component (its user and groups are what RBAC and the Node authorizer
see), the kubelet's serving certificate, and the service-account signing key. Written once per
state directory and reused by later `up`s, so a kubeconfig printed once stays valid.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_FOR = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Identity:
    """Who a client certificate says its holder is."""

    file: str
    user: str
    groups: tuple[str, ...] = ()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common: str, groups: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common)])


class Pki:
    """A directory of PEM files: `ca.crt`, `<name>.crt` and `<name>.key` for each identity."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / name

    def ensure(
        self,
        identities: tuple[Identity, ...],
        servers: dict[str, tuple[str, ...]],
    ) -> None:
        """Create what is missing: the CA, the service-account key, each client and server."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._expiring():
            for old in self.directory.iterdir():
                old.unlink()
        if not self.path("ca.crt").exists():
            self._write_ca()
        if not self.path("sa.key").exists():
            key = _key()
            self._write(
                "sa.pub",
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
            )
            self._write("sa.key", _pem_key(key))
        for identity in identities:
            if not self.path(f"{identity.file}.crt").exists():
                self._issue(identity.file, _name(identity.user, identity.groups), client=True)
        for file, names in servers.items():
            if not self.path(f"{file}.crt").exists():
                self._issue(file, _name(names[0]), client=False, alt_names=names)

    def _write(self, name: str, data: bytes) -> None:
        path = self.path(name)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.unlink(missing_ok=True)
        # Private from its first byte: a key is never readable by others, even for a moment.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        tmp.replace(path)

    def _expiring(self) -> bool:
        """The CA ends within RENEW_BEFORE: everything is issued anew (a kubeconfig printed
        before then must be read again)."""
        try:
            cert = x509.load_pem_x509_certificate(self.path("ca.crt").read_bytes())
        except (OSError, ValueError):
            return False
        left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        return left < RENEW_BEFORE

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.path("ca.crt").read_bytes())
        key = serialization.load_pem_private_key(self.path("ca.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    def _write_ca(self) -> None:
        key = _key()
        name = _name("dynamo-health-sidecar-test-ca")
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
            .sign(key, hashes.SHA256())
        )
        self._write("ca.key", _pem_key(key))
        self._write("ca.crt", cert.public_bytes(serialization.Encoding.PEM))

    def _issue(
        self,
        file: str,
        subject: x509.Name,
        *,
        client: bool,
        alt_names: tuple[str, ...] = (),
    ) -> None:
        ca_cert, ca_key = self._ca()
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if alt_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_alt_name(name) for name in alt_names]),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        self._write(f"{file}.key", _pem_key(key))
        self._write(f"{file}.crt", cert.public_bytes(serialization.Encoding.PEM))

    def kubeconfig(self, identity: Identity, server: str, path: Path) -> Path:
        """A kubeconfig for one identity, naming the PEM files (kubectl and client-go read them)."""
        text = f"""\
apiVersion: v1
kind: Config
clusters:
- name: dhs-cluster
  cluster:
    server: {server}
    certificate-authority: {self.path("ca.crt")}
users:
- name: {identity.user}
  user:
    client-certificate: {self.path(identity.file + ".crt")}
    client-key: {self.path(identity.file + ".key")}
contexts:
- name: dhs-cluster
  context:
    cluster: dhs-cluster
    user: {identity.user}
    namespace: default
current-context: dhs-cluster
"""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o600)
        return path


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
