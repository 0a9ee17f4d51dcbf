"""A restart rewrites only what changed: the real master (twistd, without
--dev-mode) started again over an unchanged database writes no project or
index page; after one release was removed while it was down, only that
project's pages; after the site's generation changed (an upgrade, edited
templates), every page.  Plus the generation itself."""

import pytest_twisted
from twisted.internet import task

from piwtwist.web import generation
from tests.e2e import Deployment, wait_for
from tests.web_support import generate_site

PROJECTS = 12
#: Site files that change only with an upgrade.
UNCHANGING = ("faq.html", "404.html", "site.css", "search.js")
CHANGED = "pkg-000005"


def page_mtimes(output):
    """Modification times (ns) of every project and index page."""
    pages = {}
    for top in ("simple", "project"):
        for path in (output / top).rglob("index.*"):
            if path.is_file():
                pages[str(path.relative_to(output))] = path.stat().st_mtime_ns
    return pages


async def run_master(reactor, deployment, until, settle=5.0):
    """Start the master, wait for *until* in its log (and *settle* seconds
    more, for the queued rewrites), stop it; its log of this run."""
    log_path = deployment.root / "master" / "master.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    master = deployment.start_master(dev_mode=False)

    def log():
        return master.log()[offset:]

    await wait_for(reactor, lambda: until in log() or
                   master.process.poll() is not None, 120,
                   f"{until!r} in the master's log")
    await task.deferLater(reactor, settle, lambda: None)
    assert master.stop(), log()
    text = log()
    assert until in text and "Traceback" not in text, text
    return text


@pytest_twisted.ensureDeferred
async def test_restart_rewrites_only_what_changed(reactor, test_db):
    generate_site(test_db, PROJECTS, versions=2, files=1)
    deployment = Deployment(test_db, "http://127.0.0.1:9/simple/",
                            abi="cp311")
    output = deployment.output
    try:
        # first start: nothing rendered yet, so everything is
        log = await run_master(reactor, deployment, "wrote the pages of")
        assert f"wrote the pages of {PROJECTS} projects" in log
        assert generation.read_generation(output) == \
            generation.site_generation()
        first = page_mtimes(output)
        # simple and project pages, their JSON; the root of the index
        assert len(first) == PROJECTS * 4 + 2

        # nothing changed: nothing is rewritten, the pages that change
        # only with an upgrade included
        unchanging = {name: (output / name).stat().st_mtime_ns
                      for name in UNCHANGING}
        log = await run_master(reactor, deployment, "tree audit:")
        assert "wrote the pages of" not in log
        assert "0 projects' pages missing or stale" in log, log
        assert page_mtimes(output) == first
        assert {name: (output / name).stat().st_mtime_ns
                for name in UNCHANGING} == unchanging

        # one release removed while the master was down: its project's
        # pages, and no other
        test_db.sql("SELECT delete_version(%s, '2.0')", (CHANGED,))
        log = await run_master(reactor, deployment, "tree audit:")
        assert "wrote the pages of" not in log
        second = page_mtimes(output)
        changed = {p for p in first if second.get(p) != first[p]}
        assert changed and all(CHANGED in p for p in changed), changed
        assert f"project/{CHANGED}/index.html" in changed
        assert f"simple/{CHANGED}/index.json" in changed
        assert '"2.0"' not in (output / "project" / CHANGED / "json" /
                               "index.json").read_text()

        # a new generation (templates or rendering code upgraded): every
        # page again, and the new generation recorded
        (output / generation.GENERATION_FILE).write_text("an older one\n")
        log = await run_master(reactor, deployment, "wrote the pages of")
        third = page_mtimes(output)
        assert set(third) == set(second)
        assert all(third[p] != second[p] for p in third), [
            p for p in third if third[p] == second[p]]
        assert generation.read_generation(output) == \
            generation.site_generation()
    finally:
        deployment.close()


def test_generation_follows_templates_and_schema(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "project.html").write_text("<html>one</html>")
    first = generation.site_generation(templates)
    assert generation.site_generation(templates) == first
    assert generation.site_generation(templates, schema_version="9.9") != \
        first
    (templates / "project.html").write_text("<html>two</html>")
    assert generation.site_generation(templates) != first
    # and the installed templates have one too
    assert len(generation.site_generation()) == 64


def test_generation_file(tmp_path):
    assert generation.read_generation(tmp_path) is None
    generation.write_generation(tmp_path, "abc")
    assert generation.read_generation(tmp_path) == "abc"
    generation.forget_generation(tmp_path)
    assert generation.read_generation(tmp_path) is None
    generation.forget_generation(tmp_path)   # gone already: fine
