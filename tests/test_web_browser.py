"""A real browser (headless Chromium) on the pages: a project page renders
its releases table, and the search page finds a package typed into it.
Screenshots are kept in tests/artifacts/ for a person to look at."""

from datetime import timedelta
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

from piwtwist.db.records import Dependency, DownloadHit
from piwtwist.web.statistics import SiteStatistics
from tests.browser import Browser, find_chromium
from tests.web_support import (
    T0, add_release, build_file, log_failure, log_success, make_wheel,
    page_writer, serve)

ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="needs Chromium (apt-get install chromium; make install-system "
           "does it as root)")


async def a_small_site(db, output, tmp_path, reactor):
    await db.set_build_abis(["cp39", "cp311", "cp313"])
    await db.add_preinstalled_apt_packages("cp311", ["libc6"])
    wheels = tmp_path / "wheels"
    names = {"numpy-lite": "Array computing, but lighter",
             "beta-tools": "Tools for beta testers",
             "gpiozero-extra": "More GPIO devices",
             "requests-mock": "Mock out responses"}
    for n, (name, description) in enumerate(names.items()):
        for m, version in enumerate(("1.0", "1.1", "2.0b1")):
            await add_release(db, name, version,
                              T0 + timedelta(days=10 * n + m),
                              description=description)
    pkg = "numpy-lite"
    for version in ("1.0", "1.1"):
        native = build_file(make_wheel(wheels, pkg, version,
                                       "cp311-cp311-linux_armv7l"),
                            output, pkg)
        await log_success(db, pkg, version, "cp311", [native], {
            native.filename: (Dependency("apt", "libopenblas0"),
                              Dependency("apt", "libc6"))})
        await log_failure(db, pkg, version, "cp39",
                          reason="needs Python 3.10 or newer")
    await db.yank_version(pkg, "1.0", "wrong results on armv6")
    for name in ("beta-tools", "gpiozero-extra", "requests-mock"):
        wheel = build_file(make_wheel(wheels, name, "1.1"), output, name)
        await log_success(db, name, "1.1", "cp39", [wheel])
        for n in range(5 if name == "beta-tools" else 1):
            await db.log_download(DownloadHit(wheel.filename, "10.0.0.1",
                                              T0 + timedelta(days=1000)))
    statistics = SiteStatistics(db, reactor)
    await statistics.refresh()
    writer = page_writer(db, output, reactor, statistics=statistics)
    writer.startService()
    await writer.rewrite_all()
    await writer.wait_until_idle()
    await writer.stopService()


@pytest_twisted.ensureDeferred
async def test_project_page_and_search_in_chromium(db, tmp_path, reactor):
    output = tmp_path / "www"
    await a_small_site(db, output, tmp_path, reactor)
    url, port = serve(reactor, output)

    def look():
        browser = Browser(tmp_path / "chromium-profile")
        try:
            browser.navigate(f"{url}/project/numpy-lite/")
            seen = {
                "title": browser.evaluate("document.title"),
                "heading": browser.evaluate(
                    "document.querySelector('h1').textContent"),
                "columns": browser.evaluate(
                    "[...document.querySelectorAll('table.releases th')]"
                    ".map(th => th.textContent)"),
                "failures": browser.evaluate(
                    "document.querySelectorAll('td.status.failure a').length"),
                "install": browser.evaluate(
                    "document.querySelector('pre.install').textContent"),
                "stylesheet": browser.evaluate(
                    "getComputedStyle(document.querySelector('header.site'))"
                    ".backgroundColor"),
            }
            project_shot = browser.screenshot(ARTIFACTS / "project-page.png")

            browser.navigate(f"{url}/packages.html")
            browser.wait_until("document.body.dataset.searchReady === 'true'")
            browser.evaluate("document.getElementById('search').focus()")
            browser.type_text("tools")
            seen["results"] = browser.wait_until(
                "[...document.querySelectorAll('#results a.package')]"
                ".map(a => a.textContent).join(',') || null")
            seen["status"] = browser.evaluate(
                "document.getElementById('search-status').textContent")
            search_shot = browser.screenshot(ARTIFACTS / "search-page.png")

            browser.navigate(f"{url}/stats.html")
            seen["charts"] = browser.evaluate(
                "document.querySelectorAll('svg.chart').length")
            browser.screenshot(ARTIFACTS / "stats-page.png")
            return seen, project_shot, search_shot
        finally:
            browser.close()

    try:
        seen, project_shot, search_shot = await threads.deferToThread(look)
    finally:
        await port.stopListening()
    assert seen["heading"] == "numpy-lite"
    assert seen["title"].startswith("numpy-lite")
    assert seen["columns"] == ["Version", "Released", "cp39", "cp311",
                               "cp313", "Files"]
    assert seen["failures"] == 2
    assert "sudo apt install libopenblas0" in seen["install"]
    assert "libc6" not in seen["install"]
    assert seen["stylesheet"] == "rgb(197, 26, 74)"   # site.css was loaded
    assert seen["results"] == "beta-tools"
    assert seen["status"].startswith("1 package found")
    assert seen["charts"] == 4
    for shot in (project_shot, search_shot):
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 10_000
