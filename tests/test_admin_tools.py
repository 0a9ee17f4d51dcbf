"""piw-import, piw-add, piw-remove and piw-rebuild against a real twistd
master (as the piwheels user when root), a real PostgreSQL and a fake PyPI
JSON API; the tools run as the console scripts an operator types."""

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.task import deferLater

from tests.e2e import Deployment, as_user, sha256_of, wait_for
from tests.fake_pypi import FakePyPI
from tests.test_wheel_info import make_wheel

BIN = Path(sys.executable).parent


@pytest_twisted.async_yield_fixture
async def fake_pypi(reactor):
    fake = FakePyPI(reactor)
    fake.listen()
    yield fake
    await fake.stop()


@pytest.fixture
def deployment(test_db, fake_pypi):
    deployed = Deployment(test_db, fake_pypi.url + "/simple/", abi="cp311")
    yield deployed
    deployed.close()


@pytest_twisted.async_yield_fixture
async def master(reactor, deployment, fake_pypi):
    """A running master that builds for cp311 and cp312 (no builders)."""
    service = deployment.start_master(
        "--build-abi", "cp312", "--pypi-json", f"{fake_pypi.url}/pypi")
    await wait_for(reactor, lambda: deployment.import_socket.exists()
                   or service.process.poll() is not None, 60,
                   "the admin socket")
    assert service.process.poll() is None, deployment.logs()
    yield service


async def tool(deployment, name, *args, stdin="", user=None):
    """Run a console script without blocking the reactor (the master asks
    the fake PyPI, which this reactor serves)."""
    command = [str(BIN / name), "-c", os.devnull,
               "--import-queue", f"unix:{deployment.import_socket}", *args]
    return await threads.deferToThread(
        subprocess.run, command, input=stdin, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, timeout=120, **as_user(user))


def one_line_error(result, *words):
    """The tool failed with one line on stderr mentioning *words*."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def versions(deployment, package):
    return deployment.database.sql(
        "SELECT version, skip, yanked, yank_reason, requires_python, "
        "released::date::text FROM versions WHERE package = %s "
        "ORDER BY version", (package,))


def add_release(deployment, package, version):
    deployment.database.sql("SELECT add_new_package(%s)", (package,))
    deployment.database.sql(
        "SELECT add_new_package_version(%s, %s, '2024-01-01Z')",
        (package, version))


def pure_wheel(directory, name="piw_demo", version="1.0", tag="py3-none-any"):
    directory.mkdir(exist_ok=True)
    metadata = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                f"Requires-Python: >=3.8\nRequires-Dist: six\n")
    return make_wheel(directory, f"{name}-{version}-{tag}.whl",
                      {f"{name}/__init__.py": b"VALUE = 42\n"}, metadata)


# the socket -----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_the_socket_is_for_the_masters_group_only(master, deployment):
    info = deployment.import_socket.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    if deployment.user is None:
        pytest.skip("needs root to try another user")
    assert info.st_uid == pwd.getpwnam(deployment.user).pw_uid
    os.chmod(deployment.import_socket.parent, 0o755)
    result = await tool(deployment, "piw-rebuild", "home", user="nobody")
    assert result.returncode == 1
    one_line_error(result, "cannot reach the master", "Permission denied",
                   "group")


@pytest_twisted.ensureDeferred
async def test_no_master_is_one_clear_line(deployment, tmp_path):
    deployment.import_socket = tmp_path / "nothing.sock"
    result = await tool(deployment, "piw-add", "-y", "foo")
    assert result.returncode == 1
    one_line_error(result, "cannot reach the master", "nothing.sock",
                   "is piwheels-master running")


# piw-add --------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_add_package_takes_every_release_with_a_source(
        reactor, master, deployment, fake_pypi):
    fake_pypi.release("Foo.Bar", "1.0", requires_python=">=3.8",
                      summary="Bars of foo", timestamp=1_700_000_000)
    fake_pypi.release("Foo.Bar", "1.1", files=("sdist", "binary"))
    fake_pypi.release("Foo.Bar", "2.0", files=("binary",))
    fake_pypi.yank("Foo.Bar", "1.1", "broken on ARM")

    result = await tool(deployment, "piw-add", "-y", "Foo.Bar")
    assert result.returncode == 0, result.stderr + deployment.logs()
    assert "added foo-bar 1.0, 1.1" in result.stdout
    assert versions(deployment, "foo-bar") == [
        ("1.0", "", False, "", ">=3.8", "2023-11-14"),
        ("1.1", "", True, "broken on ARM", "", versions(
            deployment, "foo-bar")[1][5])]
    assert deployment.database.sql(
        "SELECT description FROM packages WHERE package = 'foo-bar'") == [
        ("Bars of foo",)]
    assert ("Foo.Bar",) in deployment.database.sql(
        "SELECT name FROM package_names WHERE package = 'foo-bar'")
    queued = deployment.database.sql(
        "SELECT DISTINCT version FROM build_queue WHERE package = 'foo-bar' "
        "ORDER BY version")
    assert queued == [("1.0",), ("1.1",)]
    # the pages follow
    page = deployment.output / "project" / "foo-bar" / "index.html"
    await wait_for(reactor, page.exists, 30, "the project page")

    again = await tool(deployment, "piw-add", "-y", "foo.bar")
    assert again.returncode == 0, again.stderr
    assert "updated foo-bar" in again.stdout
    assert len(versions(deployment, "foo-bar")) == 2


@pytest_twisted.ensureDeferred
async def test_add_version_with_the_operators_overrides(
        master, deployment, fake_pypi):
    fake_pypi.release("bar", "1.0")
    fake_pypi.release("bar", "2.0")
    result = await tool(deployment, "piw-add", "-y", "bar", "1.0",
                        "--skip", "needs a GPU", "-d", "Our own words",
                        "-a", "Bar_Alias", "-r", "2020-02-03")
    assert result.returncode == 0, result.stderr + deployment.logs()
    assert versions(deployment, "bar") == [
        ("1.0", "needs a GPU", False, "", "", "2020-02-03")]
    assert deployment.database.sql(
        "SELECT description FROM packages WHERE package = 'bar'") == [
        ("Our own words",)]
    assert ("Bar_Alias",) in deployment.database.sql(
        "SELECT name FROM package_names WHERE package = 'bar'")
    assert not deployment.database.sql(
        "SELECT 1 FROM build_queue WHERE package = 'bar'")

    for args, expected in [
            (("--unskip",), ("1.0", "", False)),
            (("--yank",), ("1.0", "", True)),
            (("--unyank",), ("1.0", "", False))]:
        result = await tool(deployment, "piw-add", "-y", "bar", "1.0", *args)
        assert result.returncode == 0, result.stderr
        assert versions(deployment, "bar")[0][:3] == expected
    assert deployment.database.sql(
        "SELECT version FROM build_queue WHERE package = 'bar'") == [("1.0",)]

    # a whole package skipped, then not
    result = await tool(deployment, "piw-add", "-y", "bar", "--skip", "no")
    assert result.returncode == 0, result.stderr
    assert deployment.database.sql(
        "SELECT skip FROM packages WHERE package = 'bar'") == [("no",)]
    assert [v for v, *_ in versions(deployment, "bar")] == ["1.0", "2.0"]
    result = await tool(deployment, "piw-add", "-y", "bar", "--unskip")
    assert deployment.database.sql(
        "SELECT skip FROM packages WHERE package = 'bar'") == [("",)]


@pytest_twisted.ensureDeferred
async def test_add_from_a_requirements_file(master, deployment, fake_pypi,
                                            tmp_path):
    fake_pypi.release("alpha", "1.0")
    fake_pypi.release("alpha", "1.1")
    fake_pypi.release("Beta", "0.5")
    pins = tmp_path / "requirements.txt"
    pins.write_text("# the demo list\nalpha==1.1\n\nbeta == 0.5  # pinned\n")
    result = await tool(deployment, "piw-add", "-y", "--requirements",
                        str(pins))
    assert result.returncode == 0, result.stderr + deployment.logs()
    assert result.stdout.splitlines() == ["added alpha 1.1", "added beta 0.5"]
    assert [v for v, *_ in versions(deployment, "alpha")] == ["1.1"]
    assert [v for v, *_ in versions(deployment, "beta")] == ["0.5"]

    unpinned = tmp_path / "loose.txt"
    unpinned.write_text("alpha==1.0\nbeta>=0.5\n")
    result = await tool(deployment, "piw-add", "-y", "--requirements",
                        str(unpinned))
    assert result.returncode == 1
    one_line_error(result, "line 2", "beta>=0.5", "does not pin")
    assert [v for v, *_ in versions(deployment, "alpha")] == ["1.1"]


@pytest_twisted.ensureDeferred
async def test_add_errors(master, deployment, fake_pypi, tmp_path):
    fake_pypi.release("known", "1.0")
    result = await tool(deployment, "piw-add", "-y", "nowhere")
    assert result.returncode == 1
    one_line_error(result, "PyPI does not know nowhere")
    result = await tool(deployment, "piw-add", "-y", "known", "9.9")
    assert result.returncode == 1
    one_line_error(result, "PyPI has no release 9.9 of known")
    result = await tool(deployment, "piw-add", "-y", "../etc")
    assert result.returncode == 1
    one_line_error(result, "not a valid project name")
    assert not deployment.database.sql("SELECT * FROM packages")

    for args in [(), ("known", "--skip", "x", "--unskip"),
                 ("known", "--yank"), ("known", "1.0", "--yank", "--unyank"),
                 ("known", "-r", "last tuesday"),
                 ("known", "--requirements", str(tmp_path / "r.txt"))]:
        result = await tool(deployment, "piw-add", "-y", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Try 'piw-add --help'" in result.stderr

    declined = await tool(deployment, "piw-add", "known", stdin="n\n")
    assert declined.returncode == 2
    assert "Add known" in declined.stdout and "Nothing was changed" in \
        declined.stdout
    assert not deployment.database.sql("SELECT * FROM packages")
    agreed = await tool(deployment, "piw-add", "known", stdin="y\n")
    assert agreed.returncode == 0, agreed.stderr
    assert versions(deployment, "known")


# piw-import -----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_import_records_one_build_and_publishes_the_files(
        reactor, master, deployment, tmp_path):
    add_release(deployment, "piw-demo", "1.0")
    wheels = tmp_path / "wheels"
    pure = pure_wheel(wheels)
    native = pure_wheel(wheels, tag="cp311-cp311-linux_armv7l")
    log = tmp_path / "build.log"
    log.write_text("built on a Pi in the lab\n")
    deps = tmp_path / "deps.txt"
    deps.write_text("libfoo1\napt:libbar2  # for the ARM wheel\n")
    expected = {p.name: sha256_of(p) for p in (pure, native)}

    result = await tool(deployment, "piw-import", "-y", "--delete",
                        "--duration", "1m30s", "--output", str(log),
                        "--dependencies", str(deps), str(pure), str(native))
    assert result.returncode == 0, result.stderr + deployment.logs()
    assert "of piw-demo 1.0 for cp311" in result.stdout
    assert "deleted 2 source file(s)" in result.stdout
    assert not pure.exists() and not native.exists()

    builds = deployment.database.sql(
        "SELECT build_id, built_by, builder_label, status, abi_tag, "
        "extract(epoch FROM duration)::int FROM builds")
    assert [b[1:] for b in builds] == [(0, "import", True, "cp311", 90)]
    build_id = builds[0][0]
    files = dict(deployment.database.sql(
        "SELECT filename, filehash FROM files WHERE build_id = %s",
        (build_id,)))
    # the armv7l wheel serves armv6l too, as a builder's would
    alias = native.name.replace("armv7l", "armv6l")
    assert files == {**expected, alias: expected[native.name]}
    for name, digest in files.items():
        assert sha256_of(deployment.output / "simple" / "piw-demo" /
                         name) == digest
    assert deployment.database.sql(
        "SELECT output FROM output WHERE build_id = %s", (build_id,)) == [
        ("built on a Pi in the lab\n",)]
    assert {("apt", "libfoo1"), ("apt", "libbar2"), ("pip", "six")} <= set(
        deployment.database.sql(
            "SELECT tool, dependency FROM dependencies WHERE filename = %s",
            (native.name,)))
    index = deployment.output / "simple" / "piw-demo" / "index.html"
    await wait_for(reactor, lambda: index.exists() and
                   pure.name in index.read_text(), 30, "the index page")


@pytest_twisted.ensureDeferred
async def test_import_refusals_change_nothing_and_keep_the_files(
        master, deployment, tmp_path):
    add_release(deployment, "piw-demo", "1.0")
    wheels = tmp_path / "wheels"
    good = pure_wheel(wheels)
    garbage = wheels / "piw_demo-1.0-py3-none-any.whl"
    garbage_dir = tmp_path / "garbage"
    garbage_dir.mkdir()
    garbage = garbage_dir / garbage.name
    garbage.write_bytes(b"this is not a zip file")
    other_version = pure_wheel(tmp_path / "v2", version="2.0")
    other_abi = pure_wheel(tmp_path / "cp39", tag="cp39-cp39-linux_x86_64")

    cases = [
        ((str(garbage),), "not a valid wheel"),
        ((str(other_version),), "piw-demo has no version 2.0 in the "
                                "database"),
        (("--abi", "cp36", str(good)), "cp36 is not an ABI this master "
                                       "builds for (cp311, cp312)"),
        ((str(other_abi),), "built for cp39"),
        (("--package", "other", str(good)), "other is not in the database"),
        ((str(tmp_path / "missing.whl"),), "no such file"),
    ]
    add_release(deployment, "other", "1.0")
    cases[4] = (("--package", "other", "--package-version", "1.0",
                 str(good)), "is not a wheel of other")
    for args, problem in cases:
        result = await tool(deployment, "piw-import", "-y", "--delete", *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        one_line_error(result, problem)
    assert good.exists() and garbage.exists() and other_version.exists()
    assert not deployment.database.sql("SELECT * FROM builds")
    assert not list((deployment.output / "simple").glob("*/*.whl"))

    result = await tool(deployment, "piw-import", "-y")
    assert result.returncode == 2
    declined = await tool(deployment, "piw-import", str(good), stdin="no\n")
    assert declined.returncode == 2 and good.exists()
    assert not deployment.database.sql("SELECT * FROM builds")


@pytest_twisted.ensureDeferred
async def test_twistd_piwheels_import_is_one_shot(master, deployment,
                                                  tmp_path):
    add_release(deployment, "piw-demo", "1.0")
    wheel = pure_wheel(tmp_path / "wheels")
    command = [str(BIN / "twistd"), "-n", "--pidfile=", "piwheels-import",
               "-c", os.devnull, "--import-queue",
               f"unix:{deployment.import_socket}", "-y"]
    result = await threads.deferToThread(
        subprocess.run, [*command, "--abi", "cp99", str(wheel)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=60, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "cp99 is not an ABI" in result.stdout
    result = await threads.deferToThread(
        subprocess.run, [*command, str(wheel)], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert "imported 1 file(s)" in result.stdout
    assert deployment.database.sql(
        "SELECT builder_label FROM builds") == [("import",)]


# piw-remove -----------------------------------------------------------------

async def imported(deployment, tmp_path, version):
    add_release(deployment, "piw-demo", version)
    wheel = pure_wheel(tmp_path / f"w{version}", version=version)
    result = await tool(deployment, "piw-import", "-y", str(wheel))
    assert result.returncode == 0, result.stderr
    return deployment.output / "simple" / "piw-demo" / wheel.name


@pytest_twisted.ensureDeferred
async def test_remove_release_builds_skip_and_yank(
        reactor, master, deployment, tmp_path):
    first = await imported(deployment, tmp_path, "1.0")
    second = await imported(deployment, tmp_path, "2.0")
    assert first.exists() and second.exists()

    declined = await tool(deployment, "piw-remove", "piw-demo", "1.0",
                          stdin="\n")
    assert declined.returncode == 2 and first.exists()

    result = await tool(deployment, "piw-remove", "-y", "piw-demo", "1.0")
    assert result.returncode == 0, result.stderr
    assert "removed piw-demo 1.0 (1 file(s))" in result.stdout
    assert not first.exists()
    assert not first.with_name(first.name + ".metadata").exists()
    assert [v for v, *_ in versions(deployment, "piw-demo")] == ["2.0"]

    result = await tool(deployment, "piw-remove", "-y", "-b", "piw-demo",
                        "2.0")
    assert result.returncode == 0, result.stderr
    assert not second.exists()
    assert not deployment.database.sql("SELECT * FROM builds")
    assert deployment.database.sql(
        "SELECT version FROM build_queue WHERE package = 'piw-demo'") == [
        ("2.0",)]

    result = await tool(deployment, "piw-remove", "-y", "-s", "licence",
                        "piw-demo")
    assert result.returncode == 0, result.stderr
    assert deployment.database.sql(
        "SELECT skip FROM packages WHERE package = 'piw-demo'") == [
        ("licence",)]
    assert not deployment.database.sql("SELECT * FROM build_queue")

    result = await tool(deployment, "piw-remove", "-y", "--yank", "piw-demo",
                        "2.0")
    assert result.returncode == 0, result.stderr
    assert versions(deployment, "piw-demo")[0][2] is True

    for args, problem in [(("nothing",), "nothing is not in the database"),
                          (("piw-demo", "7.0"), "no version 7.0")]:
        result = await tool(deployment, "piw-remove", "-y", *args)
        assert result.returncode == 1
        one_line_error(result, problem)
    result = await tool(deployment, "piw-remove", "-y", "--yank", "piw-demo")
    assert result.returncode == 2

    page = deployment.output / "project" / "piw-demo"
    await wait_for(reactor, page.exists, 30, "the project page")
    result = await tool(deployment, "piw-remove", "-y", "piw-demo")
    assert result.returncode == 0, result.stderr
    assert not page.exists()
    assert not (deployment.output / "simple" / "piw-demo").exists()
    assert not deployment.database.sql("SELECT * FROM packages")


# piw-rebuild ----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_rebuild_pages(reactor, master, deployment, tmp_path):
    await imported(deployment, tmp_path, "1.0")
    page = deployment.output / "project" / "piw-demo" / "index.html"
    index = deployment.output / "simple" / "piw-demo" / "index.html"
    await wait_for(reactor, lambda: page.exists() and index.exists(), 30,
                   "the pages")
    page.unlink()
    index.unlink()
    result = await tool(deployment, "piw-rebuild", "project", "piw-demo")
    assert result.returncode == 0, result.stderr
    await wait_for(reactor, page.exists, 30, "the project page again")
    assert not index.exists()

    declined = await tool(deployment, "piw-rebuild", "index", stdin="n\n")
    assert declined.returncode == 2
    assert "every package" in declined.stdout
    result = await tool(deployment, "piw-rebuild", "-y", "index")
    assert result.returncode == 0, result.stderr
    assert "1 projects' pages will be rewritten" in result.stdout
    await wait_for(reactor, index.exists, 30, "the index page again")

    home = deployment.output / "index.html"
    await wait_for(reactor, home.exists, 30, "the home page")
    home.unlink()
    result = await tool(deployment, "piw-rebuild", "home")
    assert result.returncode == 0, result.stderr
    await wait_for(reactor, home.exists, 30, "the home page again")

    for args, code in [(("everything",), 2), (("home", "piw-demo"), 2),
                       (("project", "unknown"), 1)]:
        result = await tool(deployment, "piw-rebuild", "-y", *args)
        assert result.returncode == code, (args, result.stderr)


@pytest_twisted.ensureDeferred
async def test_a_socket_left_by_a_killed_master_is_replaced(
        reactor, master, deployment, fake_pypi):
    master.kill()
    assert deployment.import_socket.exists()
    again = deployment.start_master(
        "--build-abi", "cp312", "--pypi-json", f"{fake_pypi.url}/pypi")
    fake_pypi.release("after", "1.0")

    async def added():
        result = await tool(deployment, "piw-add", "-y", "after")
        return result.returncode == 0

    deadline = reactor.seconds() + 60
    while not await added():
        assert again.process.poll() is None, deployment.logs()
        assert reactor.seconds() < deadline, deployment.logs()
        await deferLater(reactor, 0.5, lambda: None)
    assert versions(deployment, "after")


def test_options_may_follow_the_arguments():
    from piwtwist.admin import add, remove
    options = add.Options()
    options.parseOptions(["-c", os.devnull, "bar", "1.0", "--skip",
                          "no GPU", "-y", "-d", "words"])
    assert (options["package"], options["version"], options["skip"],
            options["yes"], options["description"]) == (
        "bar", "1.0", "no GPU", 1, "words")
    options = remove.Options()
    options.parseOptions(["-c", os.devnull, "--", "-odd", "-b"])
    assert options["package"] == "-odd" and options["version"] == "-b"


def test_the_admin_socket_defaults():
    from piwtwist.master.admin_hub import admin_listen_description as d
    assert d("unix:/tmp/piw-import") == \
        "unix:/tmp/piw-import:mode=660:lockfile=1"
    assert d("unix:/run/p.sock:mode=600") == \
        "unix:/run/p.sock:mode=600:lockfile=1"
    assert d("tcp:7000:interface=127.0.0.1") == "tcp:7000:interface=127.0.0.1"
