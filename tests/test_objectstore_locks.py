"""The object store's locks as files: the security.toml SeaweedFS reads and the certificates it names.
(That the locks hold against a running store is tried in test_team_stack.py.)"""

from __future__ import annotations

import datetime
import tomllib

from cryptography import x509

from cvae_pipeline.team import objectstore_locks
from cvae_pipeline.team.objectstore_locks import JWT_SECTIONS, lock

KEYS = {name: f"key-of-{name}-" + "x" * 32 for name in JWT_SECTIONS.values()}


def test_security_toml_carries_each_jwt_key_and_mutual_tls_for_every_grpc_server(tmp_path):
    config = tomllib.loads(lock(tmp_path, KEYS).read_text())
    sections = {"jwt.signing": config["jwt"]["signing"], "jwt.signing.read": config["jwt"]["signing"]["read"]}
    sections |= {"jwt.filer_signing": config["jwt"]["filer_signing"]}
    sections["jwt.filer_signing.read"] = config["jwt"]["filer_signing"]["read"]
    assert {section: table["key"] for section, table in sections.items()} == {
        section: KEYS[secret] for section, secret in JWT_SECTIONS.items()
    }
    assert config["access"]["ui"] is False
    for component in ("master", "volume", "filer", "s3", "admin", "client"):
        assert (tmp_path / config["grpc"][component]["cert"]).is_file(), component
    assert (tmp_path / config["grpc"]["ca"]).is_file()
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "security.toml", *(tmp_path / "tls").iterdir()]}
    assert set(modes.values()) == {0o600}, modes


def test_the_certificate_is_the_stacks_cas_for_server_and_client_and_is_kept_until_it_nears_expiry(
    tmp_path, monkeypatch
):
    lock(tmp_path, KEYS)
    tls = tmp_path / "tls"
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    certificate = x509.load_pem_x509_certificate((tls / "seaweedfs.crt").read_bytes())
    certificate.verify_directly_issued_by(ca)  # raises unless the CA signed it
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in usages} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}  # server, client

    first = (tls / "seaweedfs.crt").read_bytes()
    lock(tmp_path, KEYS)  # a second `up`: the same certificate
    assert (tls / "seaweedfs.crt").read_bytes() == first
    ca_before = (tls / "ca.crt").read_bytes()
    with monkeypatch.context() as patched:
        patched.setattr(objectstore_locks, "VALID_DAYS", objectstore_locks.RENEW_DAYS - 1)
        objectstore_locks.issue_certificates(tls)  # one that expires inside the renewal window
    expiring = (tls / "seaweedfs.crt").read_bytes()
    soon = x509.load_pem_x509_certificate(expiring).not_valid_after_utc
    assert soon - datetime.datetime.now(datetime.UTC) < datetime.timedelta(days=objectstore_locks.RENEW_DAYS)
    lock(tmp_path, KEYS)  # the next `up` issues a fresh pair
    assert (tls / "seaweedfs.crt").read_bytes() not in (first, expiring) and (tls / "ca.crt").read_bytes() != ca_before


def test_a_damaged_certificate_is_issued_again(tmp_path):
    lock(tmp_path, KEYS)
    (tmp_path / "tls" / "seaweedfs.crt").write_text("not a certificate")
    lock(tmp_path, KEYS)
    x509.load_pem_x509_certificate((tmp_path / "tls" / "seaweedfs.crt").read_bytes())
