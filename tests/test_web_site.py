"""The site pages: home with live figures, the statistics page's SVG charts,
the search index, the sitemap and the static pages; the statistics service
and the rate limits."""

import json
import re
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timedelta, timezone

import pytest
import pytest_twisted
from twisted.internet import defer, task

from piwtwist.db.records import DownloadHit
from piwtwist.web import render
from piwtwist.web.page_writer import RateLimitedJob
from piwtwist.web.statistics import SiteStatistics
from tests.web_support import (
    T0, add_release, build_file, log_failure, log_success, make_wheel,
    page_writer)

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def output(tmp_path):
    path = tmp_path / "www"
    path.mkdir()
    return path


async def busy_site(db, test_db, output, tmp_path):
    """Three packages, builds today and yesterday, downloads of two."""
    await db.set_build_abis(["cp39", "cp311"])
    wheels = tmp_path / "wheels"
    for name, description in (("alpha", "first letter"),
                              ("beta-tools", "tools for beta"),
                              ("gamma", "")):
        await add_release(db, name, "1.0", T0, description=description)
    files = {}
    for name in ("alpha", "beta-tools"):
        wheel = build_file(make_wheel(wheels, name, "1.0"), output, name)
        await log_success(db, name, "1.0", "cp39", [wheel])
        files[name] = wheel.filename
    await log_failure(db, "gamma", "1.0", "cp39")
    await log_failure(db, "gamma", "1.0", "cp311")
    # one build yesterday, one long ago (outside every chart)
    test_db.sql("UPDATE builds SET built_at = now() - INTERVAL '1 day' "
                "WHERE package = 'gamma' AND abi_tag = 'cp311'")
    now = datetime.now(timezone.utc)
    for n in range(3):
        await db.log_download(DownloadHit(files["beta-tools"], "10.0.0.1",
                                          now - timedelta(hours=n)))
    await db.log_download(DownloadHit(files["alpha"], "10.0.0.2",
                                      now - timedelta(days=2)))
    await db.log_download(DownloadHit(files["alpha"], "10.0.0.2",
                                      now - timedelta(days=90)))
    return files


@pytest_twisted.ensureDeferred
async def test_home_and_statistics_pages(db, test_db, output, tmp_path,
                                         reactor):
    await busy_site(db, test_db, output, tmp_path)
    statistics = SiteStatistics(db, reactor)
    await statistics.refresh()
    writer = page_writer(db, output, reactor, statistics=statistics)
    writer.rewrite_home()
    await writer.wait_until_idle()

    home = (output / "index.html").read_text()

    def figure(name):
        return re.search(rf'id="{name}">([^<]*)<', home).group(1)

    assert figure("packages-count") == "3"
    assert figure("versions-count") == "3"
    assert figure("files-count") == "2"
    assert figure("builds-last-hour") == "3"
    assert figure("downloads-month") == "4"
    assert figure("downloads-all") == "5"
    assert re.search(r"<td>cp39</td><td>\d+</td>", home)

    stats = (output / "stats.html").read_text()
    svgs = re.findall(r"<svg.*?</svg>", stats, re.S)
    assert len(svgs) == 4
    titles = []
    for svg in svgs:
        tree = ElementTree.fromstring(svg)   # well-formed SVG
        titles.append(tree.find(f"{SVG}title").text)
        assert tree.get("viewBox")
    assert titles == ["Builds per day", "Success rate", "Build queue",
                      "Downloads per day"]
    builds_chart = ElementTree.fromstring(svgs[0])
    bar_titles = [t.text for t in builds_chart.iter(f"{SVG}title")][1:]
    today = datetime.now(timezone.utc).strftime("%d %b %Y")
    assert f"cp39, {today}: 3 builds" in bar_titles
    assert any(t.startswith("cp311") and t.endswith(": 1 builds")
               for t in bar_titles)
    downloads_chart = ElementTree.fromstring(svgs[3])
    assert sum(int(re.search(r": (\d+) downloads", t.text).group(1))
               for t in downloads_chart.iter(f"{SVG}title")
               if "downloads" in (t.text or "") and ":" in t.text) == 4
    rates = ElementTree.fromstring(svgs[1])
    assert any("67%" in (t.text or "") for t in rates.iter(f"{SVG}title"))


@pytest_twisted.ensureDeferred
async def test_statistics_page_counts_failures_by_class(
        db, test_db, output, tmp_path, reactor):
    await busy_site(db, test_db, output, tmp_path)
    await add_release(db, "delta", "1.0", T0)
    await log_failure(db, "delta", "1.0", "cp39", failure_class="network")
    await log_failure(db, "delta", "1.0", "cp311", failure_class="network")
    await add_release(db, "old", "1.0", T0)
    await log_failure(db, "old", "1.0", "cp39", failure_class="timeout")
    test_db.sql("UPDATE builds SET built_at = now() - INTERVAL '40 days' "
                "WHERE package = 'old'")
    statistics = SiteStatistics(db, reactor)
    await statistics.refresh()
    writer = page_writer(db, output, reactor, statistics=statistics)
    writer.rewrite_home()
    await writer.wait_until_idle()
    stats = (output / "stats.html").read_text()
    section = stats.split('id="failures-by-class"')[1].split("</section>")[0]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td><td>([^<]*)</td>",
                      section)
    # most first; the unclassified (an empty class) first among equals
    assert rows == [
        ("unclassified", "2", "not classified yet"),
        ("network", "2", "the build could not reach the network or the "
                         "index")]


@pytest_twisted.ensureDeferred
async def test_search_index_sitemap_and_static_pages(
        db, test_db, output, tmp_path, reactor):
    await busy_site(db, test_db, output, tmp_path)
    writer = page_writer(db, output, reactor)
    writer.startService()
    try:
        writer.rewrite_search()
        await writer.wait_until_idle()
    finally:
        await writer.stopService()
    entries = json.loads((output / "packages.json").read_text())
    assert entries == [["beta-tools", "tools for beta", 3, 3],
                       ["alpha", "first letter", 1, 2],
                       ["gamma", "", 0, 0]]
    page = (output / "packages.html").read_text()
    assert 'src="/search.js"' in page and 'id="search"' in page
    assert (output / "search.js").read_text().count("packages.json") >= 1
    sitemap = ElementTree.fromstring((output / "sitemap.xml").read_bytes())
    locations = [e.text for e in sitemap.iter(
        "{http://www.sitemaps.org/schemas/sitemap/0.9}loc")]
    assert "http://piwheels.test/project/beta-tools/" in locations
    assert "http://piwheels.test/stats.html" in locations
    for name in ("faq.html", "404.html", "site.css"):
        assert (output / name).stat().st_size > 100


def test_a_big_sitemap_becomes_an_index(monkeypatch):
    monkeypatch.setattr(render, "SITEMAP_LIMIT", 10)
    files = render.sitemaps("https://example.org/",
                            [f"p{n}" for n in range(25)])
    assert sorted(files) == ["sitemap-1.xml", "sitemap-2.xml",
                             "sitemap-3.xml", "sitemap.xml"]
    index = ElementTree.fromstring(files["sitemap.xml"])
    assert index.tag.endswith("sitemapindex")
    assert len(list(index)) == 3


@pytest_twisted.ensureDeferred
async def test_statistics_service_refreshes_and_tells_listeners(
        db, test_db, output, tmp_path, observe_errors):
    await busy_site(db, test_db, output, tmp_path)
    clock = task.Clock()
    statistics = SiteStatistics(db, clock, interval=60, chart_interval=600)
    heard = []
    statistics.listeners.append(heard.append)
    statistics.listeners.append(lambda figures: 1 / 0)   # a broken one
    statistics.startService()
    await _until(lambda: heard)
    assert heard[0].statistics.packages_count == 3
    assert dict(heard[0].queue) == {"cp39": 0, "cp311": 0}
    assert test_db.sql("SELECT count(*) FROM queue_history")[0][0] == 2
    clock.advance(60)
    await _until(lambda: len(heard) == 2)
    await statistics.stopService()
    assert not clock.getDelayedCalls()
    # the broken listener was reported each time, and the others still heard
    assert len(observe_errors) == 2
    assert "listener failed" in observe_errors[0]["log_format"]
    observe_errors.clear()


async def _until(condition, timeout=10):
    from twisted.internet import reactor
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition never became true")


def test_rate_limited_job_coalesces_requests():
    clock = task.Clock()
    runs = []
    finish = []

    async def job():
        runs.append(clock.seconds())
        d = defer.Deferred()
        finish.append(d)
        await d

    limited = RateLimitedJob(clock, 60, job, "a test job")
    for _ in range(5):
        limited.request()
    clock.advance(0)
    assert runs == [0]
    limited.request()           # while running: one more run, later
    limited.request()
    finish.pop().callback(None)
    clock.advance(30)
    assert runs == [0]
    clock.advance(30)
    assert runs == [0, 60]
    finish.pop().callback(None)
    clock.advance(600)
    assert runs == [0, 60]
    limited.request()
    clock.advance(0)
    assert runs == [0, 60, 660]
    finish.pop().callback(None)
    limited.stop()
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize("function, index", [
    ("get_builds_per_day", "builds_built_at"),
    ("get_downloads_per_day", "downloads_daily_day"),
])
def test_chart_series_are_read_through_the_time_indexes(test_db, function,
                                                        index):
    body = test_db.sql("SELECT prosrc FROM pg_proc WHERE proname = %s",
                       (function,))[0][0]
    query = re.sub(r"\bdays\b", "$1", body)
    plan = test_db.sql(
        f"SET enable_seqscan = off; PREPARE q(INTEGER) AS {query}; "
        f"EXPLAIN EXECUTE q(30)")
    text = "\n".join(row[0] for row in plan)
    assert index in text, text


@pytest_twisted.ensureDeferred
async def test_chart_series_count_days(db, test_db, output, tmp_path):
    await busy_site(db, test_db, output, tmp_path)
    test_db.sql("UPDATE builds SET built_at = now() - INTERVAL '400 days' "
                "WHERE package = 'alpha'")
    days = await db.get_builds_per_day(30)
    today = datetime.now(timezone.utc).date()
    assert {(d.day, d.abi_tag): (d.builds, d.successes) for d in days} == {
        (today, "cp39"): (2, 1),
        (today - timedelta(days=1), "cp311"): (1, 0)}
    downloads = {d.day: d.downloads
                 for d in await db.get_downloads_per_day(30)}
    assert sum(downloads.values()) == 4
    assert (await db.get_downloads_per_day(1))[0].day == today
