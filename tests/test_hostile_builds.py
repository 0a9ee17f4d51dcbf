"""Hostile sdists against a real master and a real builder under
bubblewrap, deployed as the guide says (the secret in a file the builder's
user can read, a configuration file, a HOME of its own, the master's admin
socket on the same host).

Every attack must be stopped: the build either succeeds without having
reached anything or fails with a reason that says what stopped it, nothing
lands outside the build's own directories, and the builder goes on to the
next job.
"""

import gzip
import shutil
import uuid
from pathlib import Path

import pytest
import pytest_twisted

from piwtwist.builder.sandbox import LOG_KEEP
from piwtwist.service_user import own
from piwtwist.web.layout import log_path
from tests import hostile, sdists
from tests.e2e import wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="bubblewrap is not installed (make installs it)")

#: (version, attack, release time): the queue offers the newest first, so
#: the probe goes first and the honest build last.
ATTACKS = [
    ("1.0", "probe", "2024-01-09Z"),
    ("2.0", hostile.FORK_BOMB, "2024-01-08Z"),
    ("3.0", hostile.FILL_DISK, "2024-01-07Z"),
    ("4.0", hostile.EAT_MEMORY, "2024-01-06Z"),
    ("5.0", hostile.FLOOD_LOG, "2024-01-05Z"),
    ("6.0", hostile.SLEEP, "2024-01-04Z"),
    ("7.0", hostile.BENIGN, "2024-01-03Z"),
]


@pytest.fixture
def index(served_index):
    return served_index


@pytest.fixture
def deployment(served_deployment):
    return served_deployment


def published_log(output, build_id):
    with gzip.open(log_path(output, build_id), "rt", errors="replace") as f:
        return f.read()


@pytest_twisted.ensureDeferred
async def test_hostile_builds_reach_nothing_and_the_builder_goes_on(
        reactor, deployment, index, tmp_path):
    root, _ = index
    secret_text = deployment.secret.read_text().strip()
    builder_dir = deployment.root / "pi"
    builder_dir.mkdir()
    config = builder_dir / "piwheels.conf"
    config_marker = f"config-{uuid.uuid4().hex}"
    config.write_text(f"[builder]\n# {config_marker}\nlabel = pi\n")
    home_secret = builder_dir / "home-secret.txt"
    home_secret.write_text(f"home-{uuid.uuid4().hex}")
    own(builder_dir, deployment.user)
    marker = f"piw-escaped-{uuid.uuid4().hex}"
    build_root = builder_dir / "build"

    sdist_dir = tmp_path / "sdists"
    files = []
    for version, attack, _ in ATTACKS:
        if attack == "probe":
            attack = hostile.probe(
                deployment.secret, config, builder_dir, build_root,
                deployment.import_socket, marker)
        files.append(hostile.make_sdist(sdist_dir, "piw-hostile", version,
                                        attack))
    sdists.make_simple_index(root, files)
    database = deployment.database
    database.sql("SELECT add_new_package(%s)", ("piw-hostile",))
    for version, _, released in ATTACKS:
        database.sql("SELECT add_new_package_version(%s, %s, %s)",
                     ("piw-hostile", version, released))

    deployment.start_master()
    deployment.start_builder(
        "pi", "-c", str(config), "-t", "20s", "--memory-limit", "1G",
        "--disk-limit", "100M", "--log-limit", "64M",
        "--process-limit", "400")
    # the builder's HOME is its directory (see e2e.Service)

    def all_built():
        rows = database.sql(
            "SELECT build_id, version, status, reason FROM builds "
            "ORDER BY build_id")
        return rows if len(rows) >= len(ATTACKS) else None

    try:
        rows = await wait_for(reactor, all_built, 400, "every attack built")
    except AssertionError:
        raise AssertionError(deployment.logs())
    builds = {version: (build_id, status, reason)
              for build_id, version, status, reason in rows}
    assert sorted(builds) == [version for version, _, _ in ATTACKS], rows
    logs = {version: database.sql(
        "SELECT output FROM output WHERE build_id = %s",
        (build_id,))[0][0] for version, (build_id, _, _) in builds.items()}
    everything = "\n".join(logs.values()) + deployment.logs()

    # the probe built, and reached nothing
    _, status, reason = builds["1.0"]
    probe_log = logs["1.0"]
    assert status, probe_log
    assert "REACHED" not in probe_log, probe_log
    # /tmp, /dev/shm and /var/tmp are the build's own (checked on the host
    # below); the builder's HOME and build root are not there at all
    for where in (builder_dir, build_root):
        assert f"BLOCKED write {where / marker}" in probe_log
    for what in ("secret", "config", "etc-secret", "etc-config"):
        assert f"BLOCKED read {what}" in probe_log
    assert "BLOCKED list builder-home" in probe_log
    assert probe_log.count("BLOCKED socket") == 3
    assert secret_text not in everything
    assert config_marker not in everything
    assert home_secret.read_text() not in everything
    # nothing of the host's processes: the master, the builder, PostgreSQL
    processes = [line for line in probe_log.splitlines()
                 if line.strip().startswith("PROC ")]
    assert processes
    assert not any("twistd" in line or "postgres" in line
                   for line in processes), processes
    for where in (builder_dir, Path("/tmp"), Path("/dev/shm"),
                  Path("/var/tmp"), build_root):
        assert not (where / marker).exists(), where
    # the published log is the recorded one, and as clean
    assert secret_text not in published_log(deployment.output,
                                            builds["1.0"][0])

    # every resource attack failed, saying what stopped it
    _, status, reason = builds["2.0"]
    assert not status
    assert "BLOCKED fork after" in logs["2.0"], logs["2.0"][-2000:]
    _, status, reason = builds["3.0"]
    assert not status
    assert "wrote more than 100.0 MiB" in reason or \
        "File size limit" in logs["3.0"], (reason, logs["3.0"][-2000:])
    _, status, reason = builds["4.0"]
    assert not status
    assert reason == "out of memory?", (reason, logs["4.0"][-2000:])
    _, status, reason = builds["5.0"]
    assert not status
    assert reason == "printed more than 64.0 MiB of log", reason
    assert len(logs["5.0"]) < 2 * LOG_KEEP + 64 * 1024
    assert "bytes of log left out here" in logs["5.0"]
    _, status, reason = builds["6.0"]
    assert not status
    assert reason == "timed out after 20s", reason
    assert "REACHED" not in "\n".join(logs[v] for v in logs if v != "1.0")

    # and the builder carried on to the honest build
    _, status, reason = builds["7.0"]
    assert status, logs["7.0"]
    assert (deployment.output / "simple" / "piw-hostile" /
            "piw_hostile-7.0-py3-none-any.whl").is_file()
    # nothing left behind in the build directory
    assert [p.name for p in build_root.iterdir()] == []
