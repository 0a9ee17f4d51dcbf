"""A project's simple index page, made by a string join, against the genshi
template it replaced (tests/data/simple_project.html): the same bytes for
every kind of file entry, hostile text included."""

import itertools
from html.parser import HTMLParser
from pathlib import Path

import attrs
import pytest
from genshi.template import MarkupTemplate

from piwtwist.web import render
from piwtwist.web.model import IndexFile, project_facts

ORACLE = MarkupTemplate(
    (Path(__file__).parent / "data" / "simple_project.html").read_bytes())


def genshi_page(project):
    return render.serialize(ORACLE.generate(
        project=project, api_version=render.API_VERSION))


def entry(filename, requires_python="", yanked=False, yank_reason="",
          metadata=None):
    return IndexFile(
        filename=filename, version="1.0", build_id=1, builder_abi="cp311",
        abi_tag="cp311", platform_tag="linux_armv7l", size=10,
        sha256="ab" * 32, requires_python=requires_python, yanked=yanked,
        yank_reason=yank_reason, upload_time=None, metadata_sha256=metadata)


def project_with(package, files):
    return attrs.evolve(project_facts(package), files=tuple(files))


NAMES = ["foo-1.0-py3-none-any.whl", "a&b<c>-1.0-py3-none-any.whl",
         'q"uote\'-2.0-cp311-cp311-linux_armv7l.whl']
REQUIRES = ["", ">=3.8", '<4,!=3.9.*; "x" & y', "\N{SNOWMAN}>=1"]
YANKS = [(False, ""), (True, ""), (True, "broken <b>&\"it\"</b>"),
         (False, "reason left over")]
METADATA = [None, "cd" * 32]


@pytest.mark.parametrize("name", NAMES)
def test_every_kind_of_entry_matches_the_template(name):
    files = [entry(name, requires, yanked, reason, metadata)
             for requires, (yanked, reason), metadata
             in itertools.product(REQUIRES, YANKS, METADATA)]
    project = project_with("foo", files)
    assert render.simple_project_html(project) == genshi_page(project)


def test_a_project_without_files_matches_the_template():
    project = project_with("nothing-built", [])
    assert render.simple_project_html(project) == genshi_page(project)
    assert b"<h1>Links for nothing-built</h1>" in \
        render.simple_project_html(project)


def test_hostile_package_text_is_escaped():
    project = project_with("x", [entry('"><script>x</script>.whl',
                                       requires_python='"><script>')])
    page = render.simple_project_html(project)
    assert page == genshi_page(project)
    assert b"<script>" not in page


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attributes):
        if tag == "a":
            self.links.append(dict(attributes))


def test_pip_reads_the_attributes_it_needs():
    project = project_with("foo", [
        entry("foo-1.0-py3-none-any.whl", ">=3.8", True, "bad build",
              "cd" * 32),
        entry("foo-2.0-py3-none-any.whl")])
    parser = Links()
    parser.feed(render.simple_project_html(project).decode())
    first, second = parser.links
    assert first == {
        "href": "foo-1.0-py3-none-any.whl#sha256=" + "ab" * 32,
        "data-requires-python": ">=3.8", "data-yanked": "bad build",
        "data-core-metadata": "sha256=" + "cd" * 32,
        "data-dist-info-metadata": "sha256=" + "cd" * 32}
    assert second == {"href": "foo-2.0-py3-none-any.whl#sha256=" + "ab" * 32}
