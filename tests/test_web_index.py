"""The package index for installers: PEP 503/592/629/658/691/700/714 pages
checked by an independent parser against the database, and real installers
(pip, uv) installing from the tree over HTTP."""

import json
import shutil
import sys
from pathlib import Path

import pypi_simple
import pytest
import pytest_twisted

from tests.web_support import (
    T0, add_release, build_file, log_success, make_wheel, metadata_of,
    page_writer, run, serve, sha256_of)

UV = Path(sys.executable).with_name("uv")
# the interpreter the virtual environment was made from (Debian's, in CI)
SYSTEM_PYTHON = Path(sys._base_executable)


@pytest.fixture
def output(tmp_path):
    path = tmp_path / "www"
    path.mkdir()
    return path


async def publish(db, output, wheels, package, version, abi="cp311",
                  requires_python="", dependencies=None):
    files = [build_file(w, output, package, requires_python) for w in wheels]
    build_id, _ = await log_success(db, package, version, abi, files,
                                    dependencies)
    return build_id, files


async def example_index(db, output, tmp_path):
    """foo: 1.0, 2.0 (yanked, with a reason), 3.0rc1 (Requires-Python);
    bar: an armv7l wheel and its armv6l alias; empty: no files."""
    await db.set_build_abis(["cp311"])
    wheels = tmp_path / "wheels"
    await add_release(db, "foo", "1.0", T0, description="The foo package")
    await add_release(db, "foo", "2.0", T0.replace(month=2))
    await add_release(db, "foo", "3.0rc1", T0.replace(month=3),
                      requires_python=">=3.9")
    await publish(db, output, [make_wheel(wheels, "foo", "1.0")], "foo", "1.0")
    await publish(db, output, [make_wheel(wheels, "foo", "2.0")], "foo", "2.0")
    await publish(db, output, [make_wheel(wheels, "foo", "3.0rc1",
                                          requires_python=">=3.9")],
                  "foo", "3.0rc1", requires_python=">=3.9")
    await db.yank_version("foo", "2.0", "broken <metadata> & more")
    await add_release(db, "bar", "0.1", T0)
    armv7 = make_wheel(wheels, "bar", "0.1", "cp311-cp311-linux_armv7l")
    armv6 = armv7.with_name(armv7.name.replace("armv7l", "armv6l"))
    shutil.copyfile(armv7, armv6)
    await publish(db, output, [armv7, armv6], "bar", "0.1")
    await add_release(db, "empty", "1.0", T0)


async def write_everything(writer, packages):
    for package in packages:
        assert await writer.write_project(package)
    writer.rewrite_index()
    await writer.wait_until_idle()


@pytest_twisted.ensureDeferred
async def test_simple_pages_agree_with_the_database(
        db, test_db, output, tmp_path, reactor):
    await example_index(db, output, tmp_path)
    writer = page_writer(db, output, reactor)
    await write_everything(writer, ["foo", "bar", "empty"])

    root_html = (output / "simple" / "index.html").read_text()
    assert '<meta name="pypi:repository-version" content="1.1">' in root_html
    root = pypi_simple.IndexPage.from_html(root_html)
    assert sorted(root.projects) == ["bar", "empty", "foo"]
    root_json = json.loads((output / "simple" / "index.json").read_text())
    assert root_json["meta"]["api-version"] == "1.1"
    assert sorted(p["name"] for p in root_json["projects"]) == \
        ["bar", "empty", "foo"]

    recorded = test_db.sql(
        "SELECT b.package, f.filename, f.filesize, f.filehash, "
        "f.requires_python, v.yanked, v.yank_reason, b.built_at "
        "FROM files f JOIN builds b USING (build_id) "
        "JOIN versions v ON v.package = b.package AND v.version = b.version")
    for package in ("foo", "bar", "empty"):
        directory = output / "simple" / package
        html = (directory / "index.html").read_text()
        data = json.loads((directory / "index.json").read_text())
        from_html = pypi_simple.ProjectPage.from_html(package, html)
        from_json = pypi_simple.ProjectPage.from_json_data(data)
        assert from_html.repository_version == "1.1"
        assert from_json.repository_version == "1.1"
        expected = {row[1]: row for row in recorded if row[0] == package}
        for page in (from_html, from_json):
            found = {p.filename: p for p in page.packages}
            assert set(found) == set(expected)
            for filename, (_, _, size, filehash, requires_python, yanked,
                           reason, built_at) in expected.items():
                entry = found[filename]
                assert entry.url.split("#")[0] == filename
                assert entry.digests == {"sha256": filehash}
                assert sha256_of(directory / filename) == filehash
                assert (entry.requires_python or "") == requires_python
                assert entry.is_yanked is yanked
                assert (entry.yanked_reason or "") == (reason if yanked
                                                       else "")
                # PEP 658/714: the metadata is there, and hashes as said
                metadata = directory / (filename + ".metadata")
                assert metadata.read_bytes() == metadata_of(
                    directory / filename)
                assert entry.has_metadata is True
                assert entry.metadata_digests == {
                    "sha256": sha256_of(metadata)}
        # PEP 700 facts are in the JSON
        json_entries = {p.filename: p for p in from_json.packages}
        for filename, row in expected.items():
            assert json_entries[filename].size == row[2]
            assert json_entries[filename].upload_time == row[7]
        versions = [v for (v,) in test_db.sql(
            "SELECT version FROM versions WHERE package = %s", (package,))]
        assert sorted(from_json.versions) == sorted(versions)
        assert "data-dist-info-metadata=" in html or not expected

    # the armv6l alias is an entry of its own
    bar = json.loads((output / "simple" / "bar" / "index.json").read_text())
    assert sorted(f["filename"] for f in bar["files"]) == [
        "bar-0.1-cp311-cp311-linux_armv6l.whl",
        "bar-0.1-cp311-cp311-linux_armv7l.whl"]
    # the yank reason is escaped in HTML and verbatim in JSON
    foo_html = (output / "simple" / "foo" / "index.html").read_text()
    assert 'data-yanked="broken &lt;metadata&gt; &amp; more"' in foo_html
    assert 'data-requires-python="&gt;=3.9"' in foo_html
    foo = json.loads((output / "simple" / "foo" / "index.json").read_text())
    assert {f["filename"]: f["yanked"] for f in foo["files"]} == {
        "foo-1.0-py3-none-any.whl": False,
        "foo-2.0-py3-none-any.whl": "broken <metadata> & more",
        "foo-3.0rc1-py3-none-any.whl": False}


@pytest_twisted.ensureDeferred
async def test_files_and_directories_are_world_readable(
        db, output, tmp_path, reactor):
    await example_index(db, output, tmp_path)
    writer = page_writer(db, output, reactor)
    await write_everything(writer, ["foo"])
    for path in (output / "simple", output / "project"):
        for item in [path, *path.rglob("*")]:
            mode = item.stat().st_mode & 0o777
            if item.is_dir():
                assert mode == 0o755, item
            elif item.name.endswith((".html", ".json", ".metadata")):
                assert mode == 0o644, item
    assert not list(output.rglob(".*.tmp"))


@pytest_twisted.ensureDeferred
async def test_negotiation_over_http_with_pypi_simple(
        db, output, tmp_path, reactor):
    await example_index(db, output, tmp_path)
    writer = page_writer(db, output, reactor)
    await write_everything(writer, ["foo", "bar", "empty"])
    url, port = serve(reactor, output)
    try:
        def fetch(accept):
            with pypi_simple.PyPISimple(endpoint=f"{url}/simple/",
                                        accept=accept) as client:
                return (client.get_index_page(),
                        client.get_project_page("foo"))

        from twisted.internet import threads
        for accept in (pypi_simple.ACCEPT_JSON_ONLY,
                       pypi_simple.ACCEPT_HTML_ONLY):
            index, foo = await threads.deferToThread(fetch, accept)
            assert sorted(index.projects) == ["bar", "empty", "foo"]
            assert sorted(p.filename for p in foo.packages) == [
                "foo-1.0-py3-none-any.whl", "foo-2.0-py3-none-any.whl",
                "foo-3.0rc1-py3-none-any.whl"]
    finally:
        await port.stopListening()


async def pip(*args, env=None):
    return await run([sys.executable, "-m", "pip", *args,
                      "--disable-pip-version-check",
                      "--root-user-action=ignore"], env=env)


@pytest_twisted.ensureDeferred
async def test_pip_and_uv_install_and_skip_the_yanked_release(
        db, output, tmp_path, reactor):
    await example_index(db, output, tmp_path)
    writer = page_writer(db, output, reactor)
    await write_everything(writer, ["foo", "bar"])
    url, port = serve(reactor, output)
    index = f"{url}/simple/"
    try:
        # pip: the newest non-yanked, non-pre-release: 1.0
        target = tmp_path / "pip-target"
        result = await pip("install", "--quiet", "--index-url", index,
                           "--target", target, "foo")
        assert result.returncode == 0, result.stdout
        assert (target / "foo-1.0.dist-info").is_dir(), result.stdout
        # a yanked release when pinned
        pinned = tmp_path / "pip-pinned"
        result = await pip("install", "--index-url", index, "--target",
                           pinned, "foo==2.0")
        assert result.returncode == 0, result.stdout
        assert (pinned / "foo-2.0.dist-info").is_dir()
        assert "yanked" in result.stdout.lower()

        # uv, into a fresh virtual environment
        venv = tmp_path / "uv-venv"
        result = await run([UV, "venv", "--quiet", "--python",
                            sys.executable, venv])
        assert result.returncode == 0, result.stdout
        result = await run([UV, "pip", "install", "--index-url", index,
                            "--python", venv / "bin" / "python", "foo"])
        assert result.returncode == 0, result.stdout
        assert "foo==1.0" in result.stdout, result.stdout
        result = await run([UV, "pip", "install", "--index-url", index,
                            "--python", venv / "bin" / "python",
                            "foo==2.0"])
        assert result.returncode == 0, result.stdout
        assert "foo==2.0" in result.stdout, result.stdout
        result = await run([venv / "bin" / "python", "-c",
                            "import foo; print(foo.__version__)"])
        assert result.stdout.strip() == "2.0"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_pip_of_a_fresh_venv_installs_too(
        db, output, tmp_path, reactor):
    """The pip ``python3 -m venv`` bundles (23.0.1 on Debian 12) asks for
    the JSON index and died on PEP 658's old JSON key (PEP 714)."""
    await example_index(db, output, tmp_path)
    writer = page_writer(db, output, reactor)
    await write_everything(writer, ["foo", "bar"])
    index = json.loads((output / "simple" / "foo" / "index.json").read_text())
    assert all("dist-info-metadata" not in f for f in index["files"])
    venv = tmp_path / "venv"
    result = await run([SYSTEM_PYTHON, "-m", "venv", venv])
    assert result.returncode == 0, result.stdout
    url, port = serve(reactor, output)
    try:
        result = await run([venv / "bin" / "pip", "--isolated", "install",
                            "--disable-pip-version-check",
                            "--index-url", f"{url}/simple/", "foo"])
    finally:
        await port.stopListening()
    assert result.returncode == 0, result.stdout
    assert "Traceback" not in result.stdout
    assert list((venv / "lib").glob("python*/site-packages/foo-1.0.dist-info"))


@pytest_twisted.ensureDeferred
async def test_pip_resolves_from_metadata_files_alone(
        db, output, tmp_path, reactor):
    await db.set_build_abis(["cp311"])
    wheels = tmp_path / "wheels"
    await add_release(db, "app", "1.0", T0)
    await add_release(db, "lib", "2.0", T0)
    await publish(db, output, [make_wheel(wheels, "app", "1.0",
                                          requires=["lib>=2"])], "app", "1.0")
    await publish(db, output, [make_wheel(wheels, "lib", "2.0")],
                  "lib", "2.0")
    writer = page_writer(db, output, reactor)
    await write_everything(writer, ["app", "lib"])
    # the wheels' bodies are garbage now: only the .metadata files can
    # tell pip what app needs
    for wheel in (output / "simple").glob("*/*.whl"):
        wheel.write_bytes(b"not a wheel" * 100)
    url, port = serve(reactor, output)
    report = tmp_path / "report.json"
    try:
        result = await pip("install", "--dry-run", "--ignore-installed",
                           "--index-url", f"{url}/simple/", "--report",
                           report, "app")
    finally:
        await port.stopListening()
    assert result.returncode == 0, result.stdout
    installs = json.loads(report.read_text())["install"]
    assert sorted((i["metadata"]["name"], i["metadata"]["version"])
                  for i in installs) == [("app", "1.0"), ("lib", "2.0")]
    assert installs[0]["download_info"]["archive_info"]["hashes"]["sha256"]
