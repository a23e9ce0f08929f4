"""A throwaway certificate authority and a server certificate for 127.0.0.1, for the local
HTTPS servers (the OAuth2 authority msal talks to must be https; the Graph fake is too).

Clients trust it explicitly: :meth:`TestTLS.session` is a ``requests.Session`` with
``trust_env=False`` and ``verify`` = the CA file, because this machine sets
``REQUESTS_CA_BUNDLE``, which would otherwise override ``Session.verify``
(``/work/shared/design/exchange-and-graph-offline.md``).  A subprocess (the ``mailbot`` CLI)
is pointed at the CA with ``REQUESTS_CA_BUNDLE`` instead (:meth:`TestTLS.env`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


class TestTLS:
    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mailbot-tls-"))
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(_name("mailbot test CA"))
              .issuer_name(_name("mailbot test CA")).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=1))
              .not_valid_after(now + datetime.timedelta(days=7))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False,
                                           encipher_only=False, decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1"))
                .issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=7))
                .add_extension(x509.SubjectAlternativeName([
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                    critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.ca_path = self.dir / "ca.pem"
        self.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_path = self.dir / "server.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_path = self.dir / "server.key"
        self.key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def session(self):
        """A requests.Session that trusts this CA (and nothing from the environment)."""
        import requests

        session = requests.Session()
        session.trust_env = False
        session.verify = str(self.ca_path)
        return session

    def env(self) -> dict[str, str]:
        """Environment for a subprocess whose requests must trust this CA."""
        env = dict(os.environ)
        env["REQUESTS_CA_BUNDLE"] = str(self.ca_path)
        env.pop("CURL_CA_BUNDLE", None)
        return env

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
