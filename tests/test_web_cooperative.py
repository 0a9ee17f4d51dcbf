"""Rewriting the whole site must not stop the master answering builders:
the real master (twistd) rewrites 5,000 projects at start while a builder's
connection pings it over AMP, and no ping waits long."""

import os
import time

import pytest_twisted
from twisted.internet import endpoints, task
from twisted.protocols import amp

from piwtwist import __version__
from piwtwist.protocol import builder as proto
from piwtwist.shared_secret import read_secret
from tests.e2e import Deployment, wait_for
from tests.web_support import generate_site

PROJECTS = 5000
#: The longest a ping may wait, start of the send to its answer: a reactor
#: stall within the 100 ms budget plus the round trip, on a machine whose
#: two cores PostgreSQL, this test and the master share.  The page writer's
#: own slices are ~10 ms; alone on the machine the longest ping is 30-60 ms
#: (bench/pages.py measures the stalls themselves).
LONGEST_PING = 0.15


async def connect_as_builder(reactor, port, secret):
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = await endpoints.connectProtocol(endpoint, amp.AMP())
    nonce = os.urandom(16)
    hello = await client.callRemote(
        proto.Hello, version=__version__, nonce=nonce, build_timeout=3600.0,
        busy_timeout=60.0, py_tag="cp311", abi_tag="cp311",
        platform_tag="linux_x86_64", label="pinger", os_name="test",
        os_version="1", board_revision="", board_serial="")
    assert proto.proofs_match(proto.master_proof(secret, nonce),
                              hello["proof"])
    await client.callRemote(
        proto.Authenticate,
        proof=proto.builder_proof(secret, hello["challenge"]))
    return client


@pytest_twisted.ensureDeferred
async def test_rewriting_every_page_keeps_the_master_responsive(
        reactor, test_db):
    generate_site(test_db, PROJECTS, versions=2, files=1)
    deployment = Deployment(test_db, "http://127.0.0.1:9/simple/",
                            abi="cp311")
    try:
        master = deployment.start_master(dev_mode=False)
        await wait_for(reactor, lambda: "piwtwist master ready" in
                       master.log(), 60, "the master to start")
        secret = read_secret(deployment.secret)
        client = await connect_as_builder(reactor, deployment.port, secret)
        delays = []
        while "wrote the pages of" not in master.log():
            assert master.process.poll() is None, master.log()
            started = time.perf_counter()
            await client.callRemote(
                proto.Busy, timestamp=time.time(), disk_total=1,
                disk_free=1, mem_total=1, mem_free=1, load_average=0.0)
            delays.append(time.perf_counter() - started)
            assert len(delays) < 200_000, "the rewrite never finished"
            await task.deferLater(reactor, 0.01, lambda: None)
        client.transport.loseConnection()
        written = sorted((deployment.output / "project").iterdir())
        assert len(written) == PROJECTS
        assert (deployment.output / "simple" / "pkg-000001" /
                "index.json").is_file()
        log = master.log()
        assert "Traceback" not in log, log
        assert master.stop()
    finally:
        deployment.close()
    delays.sort()
    print(f"\n{len(delays)} pings while {PROJECTS} projects were written: "
          f"median {delays[len(delays) // 2] * 1000:.1f} ms, "
          f"99th percentile {delays[int(len(delays) * 0.99)] * 1000:.1f} ms, "
          f"longest {delays[-1] * 1000:.1f} ms")
    assert len(delays) > 50
    assert delays[-1] < LONGEST_PING, delays[-10:]
