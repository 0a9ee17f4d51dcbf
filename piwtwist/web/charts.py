"""Server-side SVG charts for the statistics page.

No JavaScript and no chart library: each chart is a small inline SVG with a
``<title>`` on every bar and point, so a person can hover for the exact
figure and a screen reader gets a description.  The series come from the
statistics service (:mod:`.statistics`).
"""

import math
from datetime import date, datetime, timedelta, timezone
from html import escape

import attrs
from genshi.core import Markup

from .model import abi_order

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 40
PALETTE = ("#c51a4a", "#2b7bb9", "#6aa84f", "#e69138", "#8e63ce",
           "#3d9c9c", "#a64d79", "#7f6000")


@attrs.frozen
class ChartSeries:
    """What the statistics page plots; built by the statistics service."""

    days: int = 30
    today: date | None = None
    builds_per_day: tuple = ()
    downloads_per_day: tuple = ()
    queue_history: tuple = ()
    #: get_download_statistics(days): {kind: [(name, downloads,
    #: time_saved), ...]} for the tables under the charts
    download_tables: dict = attrs.field(factory=dict)
    #: get_failures_by_class(days): [(failure_class, failures), ...]
    failures_by_class: tuple = ()


@attrs.frozen
class Chart:
    title: str
    description: str
    svg: Markup


def nice_ticks(maximum, count=4):
    """Round tick values from 0 to at least *maximum*."""
    if maximum <= 0:
        return [0, 1]
    raw = maximum / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10)
                if m * magnitude >= raw)
    ticks = [0]
    while ticks[-1] < maximum:
        ticks.append(ticks[-1] + step)
    return ticks


def _label(value):
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 10_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def _frame(ticks, y_format, x_labels):
    """Axes, grid lines and labels; returns (svg parts, y scale)."""
    plot_h = HEIGHT - TOP - BOTTOM
    top = ticks[-1] or 1

    def y(value):
        return TOP + plot_h - plot_h * (value / top)

    parts = []
    for tick in ticks:
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
                     f'y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y(tick) + 4:.1f}"'
                     f' text-anchor="end">{escape(y_format(tick))}</text>')
    for x, text in x_labels:
        parts.append(f'<text class="axis" x="{x:.1f}" '
                     f'y="{HEIGHT - BOTTOM + 16}"'
                     f' text-anchor="middle">{escape(text)}</text>')
    parts.append(f'<line class="axis-line" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
                 f'y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>')
    return parts, y


def _legend(names):
    parts, x = [], LEFT
    for n, name in enumerate(names):
        colour = PALETTE[n % len(PALETTE)]
        parts.append(f'<rect x="{x}" y="{HEIGHT - 14}" width="10" height="10"'
                     f' fill="{colour}"/>')
        parts.append(f'<text class="legend" x="{x + 14}" y="{HEIGHT - 5}">'
                     f'{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return parts


def _svg(title, parts):
    body = "".join(parts)
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">'
        f'<title>{escape(title)}</title>{body}</svg>')


def _days(series):
    today = series.today or datetime.now(timezone.utc).date()
    return [today - timedelta(days=n) for n in range(series.days - 1, -1, -1)]


def _day_labels(days, x_of):
    return [(x_of(i), d.strftime("%d %b")) for i, d in enumerate(days)
            if (len(days) - 1 - i) % 7 == 0]


def stacked_bars(title, days, stacks, unit):
    """Bars per day, one colour per series in *stacks* (name -> values)."""
    plot_w = WIDTH - LEFT - RIGHT
    slot = plot_w / max(len(days), 1)
    totals = [sum(values[i] for values in stacks.values())
              for i in range(len(days))]
    ticks = nice_ticks(max(totals, default=0))

    def x_of(i):
        return LEFT + slot * (i + 0.5)

    parts, y = _frame(ticks, _label, _day_labels(days, x_of))
    for i, day in enumerate(days):
        base = 0
        for n, (name, values) in enumerate(stacks.items()):
            value = values[i]
            if not value:
                continue
            top, bottom = y(base + value), y(base)
            parts.append(
                f'<rect x="{LEFT + slot * i + slot * 0.12:.1f}" '
                f'y="{top:.1f}" width="{slot * 0.76:.1f}" '
                f'height="{max(bottom - top, 0.5):.1f}" '
                f'fill="{PALETTE[n % len(PALETTE)]}"><title>'
                f'{escape(name)}, {day:%d %b %Y}: {value:,} {unit}'
                f'</title></rect>')
            base += value
    if len(stacks) > 1 or (stacks and next(iter(stacks)) != unit):
        parts += _legend(list(stacks))
    return _svg(title, parts)


def lines(title, xs, series, y_format=_label, maximum=None, x_labels=()):
    """One line per entry of *series* (name -> values, None for a gap) over
    the x positions *xs* (0 to 1)."""
    plot_w = WIDTH - LEFT - RIGHT
    highest = max((v for values in series.values() for v in values
                   if v is not None), default=0)
    ticks = nice_ticks(maximum if maximum is not None else highest)

    def x_of(position):
        return LEFT + plot_w * position

    parts, y = _frame(ticks, y_format,
                      [(x_of(p), text) for p, text in x_labels])
    for n, (name, values) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        path, points = [], []
        for position, value in zip(xs, values):
            if value is None:
                if len(path) > 1:
                    points.append(path)
                path = []
                continue
            path.append((x_of(position), y(value), value))
        if path:
            points.append(path)
        for run in points:
            if len(run) > 1:
                coordinates = " ".join(f"{px:.1f},{py:.1f}"
                                       for px, py, _ in run)
                parts.append(f'<polyline fill="none" stroke="{colour}" '
                             f'stroke-width="2" points="{coordinates}"/>')
            if len(run) <= 40:
                for px, py, value in run:
                    parts.append(
                        f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" '
                        f'fill="{colour}"><title>{escape(name)}: '
                        f'{escape(y_format(value))}</title></circle>')
    parts += _legend(list(series))
    return _svg(title, parts)


def site_charts(series):
    """The statistics page's four charts."""
    days = _days(series)
    index = {d: i for i, d in enumerate(days)}
    abis = sorted({row.abi_tag for row in series.builds_per_day},
                  key=abi_order)

    builds = {abi: [0] * len(days) for abi in abis}
    attempts = {abi: [0] * len(days) for abi in abis}
    successes = {abi: [0] * len(days) for abi in abis}
    for row in series.builds_per_day:
        if row.day in index:
            builds[row.abi_tag][index[row.day]] += row.builds
            attempts[row.abi_tag][index[row.day]] += row.builds
            successes[row.abi_tag][index[row.day]] += row.successes
    rates = {abi: [(100.0 * successes[abi][i] / attempts[abi][i])
                   if attempts[abi][i] else None for i in range(len(days))]
             for abi in abis}
    span = max(len(days) - 1, 1)
    day_positions = [i / span for i in range(len(days))]
    day_labels = [(i / span, days[i].strftime("%d %b"))
                  for i in range(len(days)) if (len(days) - 1 - i) % 7 == 0]

    downloads = [0] * len(days)
    for row in series.downloads_per_day:
        if row.day in index:
            downloads[index[row.day]] += row.downloads

    start = datetime.combine(days[0], datetime.min.time(), timezone.utc)
    length = timedelta(days=len(days)).total_seconds()
    samples = {}
    for sample in series.queue_history:
        samples.setdefault(sample.abi_tag, {})[sample.recorded_at] = \
            sample.queued
    moments = sorted({s.recorded_at for s in series.queue_history})
    queue_xs = [min(max((m - start).total_seconds() / length, 0.0), 1.0)
                for m in moments]
    queue = {abi: [samples[abi].get(m) for m in moments]
             for abi in sorted(samples, key=abi_order)}

    return [
        Chart("Builds per day",
              f"Build attempts per day and ABI over the last {len(days)} "
              f"days.",
              stacked_bars("Builds per day", days, builds, "builds")),
        Chart("Success rate",
              "The share of each day's builds that produced a wheel.",
              lines("Success rate", day_positions, rates,
                    y_format=lambda v: f"{v:.0f}%", maximum=100,
                    x_labels=day_labels)),
        Chart("Build queue",
              "Releases waiting for a build, per ABI (hourly samples).",
              lines("Build queue", queue_xs, queue, x_labels=day_labels)),
        Chart("Downloads per day",
              f"Wheels downloaded per day over the last {len(days)} days.",
              stacked_bars("Downloads per day", days,
                           {"downloads": downloads}, "downloads")),
    ]
