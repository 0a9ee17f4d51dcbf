"""Builders reach the hub over TLS when the endpoints say so: the master
listens on an ``ssl:`` endpoint and a builder connects with ``tls:``."""

import datetime

import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import endpoints
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from piwtwist import __version__
from piwtwist.builder.tap import master_endpoint_description
from piwtwist.master.build_queue import BuildQueue
from piwtwist.master.builder_hub import BuilderHub
from piwtwist.protocol import builder as proto
from tests.test_builder_hub import (
    SECRET, STATS, FakeDatabase, FakeReceiver, entry,
)


class BuilderEnd(amp.AMP):
    """A builder's end that hears the master's goodbye, as builders do."""

    @proto.Bye.responder
    def bye(self, reason):
        return {}


def self_signed(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                           critical=True)
            .sign(key, hashes.SHA256()))
    key_path = directory / "key.pem"
    cert_path = directory / "roots" / "cert.pem"
    cert_path.parent.mkdir()
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest_twisted.ensureDeferred
async def test_builder_talks_to_the_hub_over_tls(reactor, tmp_path):
    key_path, cert_path = self_signed(tmp_path)
    db = FakeDatabase([entry("foo")])
    queue = BuildQueue(db, reactor, size=10)
    hub = BuilderHub(db, queue, FakeReceiver(tmp_path), reactor, SECRET,
                     tmp_path, index_url="https://idx/")
    queue.startService()
    hub.startService()
    server = endpoints.serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={key_path}:"
                 f"certKey={cert_path}")
    port = await server.listen(hub.factory())
    description = master_endpoint_description(
        f"tls:localhost:{port.getHost().port}:trustRoots={cert_path.parent}")
    client = endpoints.clientFromString(reactor, description)
    connection = await client.connect(Factory.forProtocol(BuilderEnd))
    try:
        nonce = b"n" * 32
        reply = await connection.callRemote(
            proto.Hello, version=__version__, nonce=nonce,
            build_timeout=60.0, busy_timeout=60.0, py_tag="cp311",
            abi_tag="cp311", platform_tag="linux_armv7l", label="tls",
            os_name="", os_version="", board_revision="", board_serial="")
        assert reply["proof"] == proto.master_proof(SECRET, nonce)
        await connection.callRemote(proto.Authenticate, proof=proto.builder_proof(
            SECRET, reply["challenge"]))
        work = await connection.callRemote(proto.Idle, **STATS)
        assert (work["action"], work["package"]) == (proto.BUILD, "foo")
        assert connection.transport.getPeerCertificate() is not None
    finally:
        connection.transport.loseConnection()
        await hub.stopService()
        await queue.stopService()
        await port.stopListening()
