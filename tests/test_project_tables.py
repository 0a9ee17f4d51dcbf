"""The project page's two long tables, made by string joins, against the
genshi template that made them before (tests/data/project_page.html): the
same page, element for element and text for text, for every kind of
release, cell and file, hostile text included."""

from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
from genshi.template import TemplateLoader

from piwtwist.db.records import (
    BuildAbi, Dependency, ProjectBuild, ProjectFile, ProjectVersion)
from piwtwist.resources import templates_dir
from piwtwist.web import render
from piwtwist.web.model import apt_install_lines, project_facts

T0 = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
HOSTILE = '<script>alert("x")</script> & \'quoted\''


def old_page(renderer, project):
    """The page as the old template renders it (its layout from
    templates/)."""
    loader = TemplateLoader([str(Path(__file__).parent / "data"),
                             str(templates_dir())], auto_reload=False)
    stream = loader.load("project_page.html").generate(
        project=project, apt_lines=apt_install_lines(project),
        newest_stable=project.install_version, site_name=renderer.site_name,
        site_url=renderer.site_url, size=render._size,
        number=render._number, date=render._date,
        symbols=render.STATUS_SYMBOLS, Markup=render.Markup)
    return render.serialize(stream)


class Events(HTMLParser):
    """Tags with their attributes, and text without the whitespace at its
    ends (where the two differ, by design)."""

    def __init__(self, page):
        super().__init__(convert_charrefs=True)
        self.events = []
        self.feed(page.decode("utf-8"))
        self.close()

    def handle_starttag(self, tag, attributes):
        self.events.append(("start", tag, tuple(sorted(attributes))))

    def handle_endtag(self, tag):
        self.events.append(("end", tag))

    def handle_data(self, data):
        if data.strip():
            self.events.append(("text", " ".join(data.split())))


def project(reason="it broke", hint="apt install libfoo-dev",
            yank_reason="broken upload", description="A package"):
    versions = [
        ProjectVersion("3.0b1", T0, "", False, "", ">=3.9", (), ()),
        ProjectVersion("2.0", T0 - timedelta(days=1), "", True, yank_reason,
                       "", (), ()),
        ProjectVersion("1.5", T0 - timedelta(days=2), "", True, "", "",
                       (), ()),
        ProjectVersion("1.0", T0 - timedelta(days=3), "binary only", False,
                       "", "", (), ()),
        ProjectVersion("0.9", T0 - timedelta(days=4), "", False, "", "",
                       (), ()),
    ]
    builds = [
        ProjectBuild(1, "3.0b1", "cp311", True, T0, timedelta(seconds=5), "",
                     rescued="setuptools<82"),
        ProjectBuild(2, "3.0b1", "cp313", False, T0, timedelta(seconds=5),
                     reason, "missing-header", hint),
        ProjectBuild(3, "2.0", "cp311", True, T0, timedelta(seconds=5), ""),
        ProjectBuild(4, "0.9", "cp311", False, T0, timedelta(seconds=5),
                     reason),
    ]
    files = [
        ProjectFile("3.0b1", 1, "cp311", "foo-3.0b1-cp311-cp311-linux_armv7l"
                    ".whl", 123_456, "ab" * 32, "", False, ""),
        ProjectFile("2.0", 3, "none", "foo-2.0-py3-none-any.whl", 999,
                    "cd" * 32, "", True, yank_reason),
        ProjectFile("2.0", 3, "cp311", "foo-2.0-cp311-cp311-linux_armv6l.whl",
                    5_000_000, "ef" * 32, "", False, ""),
    ]
    dependencies = {
        files[0].filename: [Dependency("apt", "libc6"),
                            Dependency("apt", "libfoo1"),
                            Dependency("pip", "requests")],
        files[2].filename: [Dependency("unresolved", "libgone.so.1")],
    }
    return project_facts(
        "foo", description=description, versions=versions, files=files,
        builds=builds, dependencies=dependencies,
        build_abis=[BuildAbi("cp311"), BuildAbi("cp313"),
                    BuildAbi("cp39", skip="too old")],
        downloads=(12, 3456))


@pytest.mark.parametrize("facts", [
    project(), project(reason=HOSTILE, hint=HOSTILE, yank_reason=HOSTILE,
                       description=HOSTILE),
    project_facts("empty")], ids=["every-kind", "hostile", "empty"])
def test_the_page_is_the_old_templates(facts):
    renderer = render.Renderer()
    new = render.serialize(renderer.project_page(facts))
    assert Events(new).events == Events(old_page(renderer, facts)).events


def test_hostile_text_stays_text():
    page = render.serialize(render.Renderer().project_page(
        project(reason=HOSTILE, hint=HOSTILE, yank_reason=HOSTILE)))
    assert b"<script>" not in page
    assert b"&lt;script&gt;" in page


def test_the_tables_show_what_the_facts_say():
    page = render.serialize(render.Renderer().project_page(project()))
    text = " ".join(e[1] for e in Events(page).events if e[0] == "text")
    assert "rescued with setuptools<82" in text
    assert "missing-header" in text and "apt install libfoo-dev" in text
    assert "120.6 KB" in text and "4.8 MB" in text
    assert "libc6, libfoo1, requests" in text
    assert ("start", "tr", (("class", "yanked"),)) in Events(page).events
    assert ("start", "tr", (("class", "prerelease"),)) in Events(page).events
