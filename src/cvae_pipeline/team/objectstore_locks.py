"""The locks on the object store's doors other than S3: SeaweedFS's ``security.toml`` and the TLS
material it names, generated per stack.

``weed mini`` serves more than the S3 API: the master's and the filer's HTTP APIs, the volume
server's, and a gRPC port beside each (port + 10000). Unlocked, any process that reaches them can
list, read, replace or delete every object of the bucket, or drop its whole collection with one
``GET /col/delete`` to the master, bypassing MLflow's users and the S3 identities. So:

- the master's and the filer's HTTP APIs are switched off (``weed mini -disableHttp``; nothing in
  the stack uses them — the S3 gateway reaches the filer and the master over gRPC);
- the volume server accepts a write or a read of a chunk only with a JWT signed by the master
  (``[jwt.signing]``, ``[jwt.signing.read]``); the filer's HTTP writes and reads need one signed by
  the S3 gateway (``[jwt.filer_signing]``, ``[jwt.filer_signing.read]``), a second lock on a door
  already shut, which also guards the filer's IAM gRPC service;
- every gRPC port demands a client certificate from this stack's own CA (mutual TLS), which the
  services present to each other and nothing else holds;
- the volume server's status UI is off.

What still answers without a credential: the health checks, the admin server's Prometheus counters
and the master's and the volume server's status pages (which volumes exist and their sizes; no keys,
no contents). The keys and the private
key live in the state folder (0700, files 0600), like the stack's other secrets.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path

from .secret_files import write_secret

#: security.toml section → the stack secret holding its JWT signing key
JWT_SECTIONS = {
    "jwt.signing": "seaweedfs_volume_write",
    "jwt.signing.read": "seaweedfs_volume_read",
    "jwt.filer_signing": "seaweedfs_filer_write",
    "jwt.filer_signing.read": "seaweedfs_filer_read",
}
#: the gRPC servers (and the client side) that present and demand the stack's certificate
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "client")
#: a certificate is issued again when it would expire within this many days
RENEW_DAYS = 30
VALID_DAYS = 3650
CONFIG_NAME = "security.toml"
TLS_FOLDER = "tls"


def _needs_certificates(folder: Path) -> bool:
    from cryptography import x509

    certificate = folder / "seaweedfs.crt"
    if not all((folder / name).is_file() for name in ("ca.crt", "seaweedfs.crt", "seaweedfs.key")):
        return True
    try:
        expires = x509.load_pem_x509_certificate(certificate.read_bytes()).not_valid_after_utc
    except ValueError:  # damaged: it is generated material, issue it again
        return True
    return expires - datetime.datetime.now(datetime.UTC) < datetime.timedelta(days=RENEW_DAYS)


def issue_certificates(folder: Path) -> None:
    """A CA of the stack's own and one certificate it signs, for every service as server and as client
    (SeaweedFS checks the chain, not the host name, so one certificate serves all; its subject
    alternative names, loopback's, are for clients that do check)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = {
        "not_valid_before": now - datetime.timedelta(minutes=5),
        "not_valid_after": now + datetime.timedelta(days=VALID_DAYS),
    }

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cvae team stack CA")])
    ca = (
        x509.CertificateBuilder(**valid)
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    certificate = (
        x509.CertificateBuilder(**valid)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seaweedfs")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    write_secret(
        folder / "seaweedfs.key",
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_secret(folder / "seaweedfs.crt", certificate.public_bytes(pem))
    write_secret(folder / "ca.crt", ca.public_bytes(pem))


def security_config(keys: dict[str, str], tls: Path) -> str:
    """``security.toml``: the four JWT signing keys (``keys`` by stack secret name), mutual TLS on every
    gRPC port with the certificates in ``tls``, the volume UI off."""
    quoted = json.dumps  # a TOML basic string escapes as JSON does
    lines = ["# written by `cvae team up` for this stack; its keys are also in stack.json", ""]
    for section, secret in JWT_SECTIONS.items():
        lines += [f"[{section}]", f"key = {quoted(keys[secret])}", "expires_after_seconds = 10", ""]
    lines += ["[access]", "ui = false", ""]
    lines += ["[grpc]", f"ca = {quoted(str(tls / 'ca.crt'))}", ""]
    for component in GRPC_COMPONENTS:
        cert, key = (quoted(str(tls / name)) for name in ("seaweedfs.crt", "seaweedfs.key"))
        lines += [f"[grpc.{component}]", f"cert = {cert}", f"key = {key}", ""]
    return "\n".join(lines)


def lock(directory: Path, keys: dict[str, str]) -> Path:
    """Write ``directory``/security.toml (read by ``weed`` from its working directory) and the TLS
    material it names, issuing certificates when there are none or they are about to expire."""
    tls = directory / TLS_FOLDER
    if _needs_certificates(tls):
        issue_certificates(tls)
    config = directory / CONFIG_NAME
    write_secret(config, security_config(keys, tls))
    return config
