"""A server-rendered SVG of the pool size by state over the last hour.

Stacked steps: each sample holds from its time to the next sample's (the last
one to `now`); a blind sample (`counts` None) breaks the series. No JavaScript,
no external resources; every text comes from this module and is escaped all
the same. The `viewBox` and `max-width:100%` let it shrink on a phone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape

from ..model import WorkerState

S = WorkerState
#: bottom to top: what serves users first, what needs attention on top
STACK_ORDER = (S.BUSY, S.IDLE, S.STARTING, S.DRAINING, S.HELD, S.DRAINED, S.UNSCHEDULABLE, S.LOST)
#: Okabe-Ito colours: distinct for colour-blind readers, readable on a white page
COLOURS = {
    S.BUSY: "#0072B2",
    S.IDLE: "#009E73",
    S.STARTING: "#56B4E9",
    S.DRAINING: "#CC79A7",
    S.HELD: "#E69F00",
    S.DRAINED: "#999999",
    S.UNSCHEDULABLE: "#7F3C8D",
    S.LOST: "#D55E00",
}
TEXT, GRID, AXIS = "#333333", "#e2e2e2", "#888888"
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="11"'
LEFT, RIGHT, TOP = 50, 12, 14  # LEFT: room for four-digit ticks beside the axis label
ROW = 15  # one line of text
CHAR = 6.6  # rough width of one character at 11 px, for the legend's layout
TITLE = "Spark workers by state"

Counts = Mapping[WorkerState, int] | Mapping[str, int] | None


def render_svg(
    samples: Iterable[tuple[float, Counts]],
    *,
    now: float,
    window: float = 3600,
    width: int = 640,
    height: int = 180,
) -> str:
    """The SVG (a string) of `samples` `(at, counts_by_state)` within `window` seconds before `now`."""
    points = sorted(
        ((at, _normalise(counts)) for at, counts in samples if now - window <= at <= now), key=lambda p: p[0]
    )
    minutes = max(1, round(window / 60))
    title = f"{TITLE}, last {minutes} minutes"
    if not points:
        empty = _text(width / 2, height / 2, "no data yet", "middle")
        return _svg(width, height, title, "No samples yet.", [empty])

    states = [s for s in STACK_ORDER if any(c and c.get(s) for _, c in points)]
    totals = [sum(c.values()) for _, c in points if c is not None]
    ymax = max(totals, default=0) or 1
    legend, legend_rows = _legend(states, _latest(points), width)
    bottom = 2 * ROW + 4 + legend_rows * ROW + 4
    plot_h = max(40, height - TOP - bottom)
    height = TOP + plot_h + bottom
    x0, x1, y0 = LEFT, width - RIGHT, TOP + plot_h

    def x(at: float) -> float:
        return x0 + (x1 - x0) * (1 - (now - at) / window)

    def y(n: float) -> float:
        return y0 - plot_h * n / ymax

    parts = _axes(x0, x1, y0, plot_h, ymax, y, minutes)
    for run in _runs(points, now):
        segments = _pixel_segments(run, x, states)
        for k, state in enumerate(states):
            if not any(v[k] for _, _, v in segments):
                continue
            d = _area_path(segments, k, y)
            parts.append(f'<path class="series" data-state="{escape(state.value)}" d="{d}" '
                         f'fill="{COLOURS[state]}"><title>{escape(state.value)}</title></path>')
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="{AXIS}"/>')
    parts.extend(_at(legend, y0 + 2 * ROW + 8))
    return _svg(width, height, title, _summary(_latest(points), ymax), parts)


def _normalise(counts: Counts) -> dict[WorkerState, int] | None:
    if counts is None:
        return None
    return {WorkerState(k): int(n) for k, n in counts.items() if n}


def _latest(points) -> dict[WorkerState, int] | None:
    return next((c for _, c in reversed(points) if c is not None), None)


def _runs(points, now: float):
    """Runs of seen samples, each a list of (start, end, counts); a blind sample ends a run."""
    runs, run = [], []
    for i, (at, counts) in enumerate(points):
        if counts is None:
            if run:
                runs.append(run)
            run = []
            continue
        end = points[i + 1][0] if i + 1 < len(points) else now
        run.append((at, end, counts))
    if run:
        runs.append(run)
    return runs


def _pixel_segments(run, x, states):
    """(px_start, px_end, cumulative tops per state) with equal neighbours merged."""
    segments: list[list] = []
    for start, end, counts in run:
        tops, total = [], 0
        for s in states:
            total += counts.get(s, 0)
            tops.append(total)
        if segments and segments[-1][2] == tops:
            segments[-1][1] = x(end)
        else:
            segments.append([x(start), x(end), tops])
    # The newest state holds from the last sample to now: often under a pixel. Show it.
    last = segments[-1]
    if last[1] - last[0] < 2:
        last[0] = last[1] - 2
        if len(segments) > 1:
            segments[-2][1] = min(segments[-2][1], last[0])
    return [(a, b, tops) for a, b, tops in segments]


def _area_path(segments, k: int, y) -> str:
    """The band between state k-1's tops and state k's, as stepped lines."""
    upper = [(px, y(tops[k])) for a, b, tops in segments for px in (a, b)]
    lower = [(px, y(tops[k - 1] if k else 0)) for a, b, tops in reversed(segments) for px in (b, a)]
    coords: list[str] = []
    for px, py in upper + lower:
        c = f"{px:.1f},{py:.1f}"
        if not coords or coords[-1] != c:
            coords.append(c)
    return "M" + " L".join(coords) + " Z"


def _ticks(ymax: int) -> list[int]:
    """Round integer steps up to ymax, and ymax itself at the top."""
    step = next(m * 10**e for e in range(12) for m in (1, 2, 5) if m * 10**e >= ymax / 4)
    ticks = [n for n in range(0, ymax, step) if n < ymax - step / 2]
    return ticks + [ymax]


def _axes(x0, x1, y0, plot_h, ymax, y, minutes) -> list[str]:
    parts = []
    for n in _ticks(ymax):
        yy = y(n)
        parts.append(f'<line x1="{x0}" y1="{yy:.1f}" x2="{x1}" y2="{yy:.1f}" stroke="{GRID}"/>')
        parts.append(_text(x0 - 6, yy + 4, str(n), "end"))
    for i in range(5):
        xx = x0 + (x1 - x0) * i / 4
        ago = round(minutes * (4 - i) / 4)
        parts.append(f'<line x1="{xx:.1f}" y1="{y0}" x2="{xx:.1f}" y2="{y0 + 4}" stroke="{AXIS}"/>')
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(_text(xx, y0 + ROW, str(ago), anchor))
    parts.append(_text((x0 + x1) / 2, y0 + 2 * ROW, "minutes ago", "middle"))
    cy = TOP + plot_h / 2
    parts.append(_text(10, cy, "workers", "middle", f' transform="rotate(-90 10 {cy:.1f})"'))
    return parts


def _legend(states, latest, width: int):
    """Legend items laid out left to right, wrapping: ([(dx, row, state, label)], rows)."""
    items, dx, row = [], 0.0, 0
    for state in states:
        label = f"{state.value} {latest.get(state, 0) if latest else 0}"
        w = 14 + len(label) * CHAR + 14
        if dx and LEFT + dx + w > width - RIGHT:
            dx, row = 0.0, row + 1
        items.append((dx, row, state, label))
        dx += w
    return items, (row + 1 if items else 0)


def _at(legend, top: float) -> list[str]:
    parts = []
    for dx, row, state, label in legend:
        lx, ly = LEFT + dx, top + row * ROW
        parts.append(f'<g class="legend" data-state="{escape(state.value)}">'
                     f'<rect x="{lx:.1f}" y="{ly:.1f}" width="10" height="10" fill="{COLOURS[state]}"/>'
                     f"{_text(lx + 14, ly + 9, label)}</g>")
    return parts


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{TEXT}" {FONT}{extra}>'
            f"{escape(text)}</text>")


def _summary(latest, ymax: int) -> str:
    if latest is None:
        return f"The pool could not be seen recently. Peak: {ymax} workers."
    now = ", ".join(f"{latest[s]} {s.value}" for s in STACK_ORDER if latest.get(s)) or "no workers"
    return f"Now: {now}. Peak: {ymax} workers."


def _svg(width: int, height: int, title: str, desc: str, parts: list[str]) -> str:
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" style="max-width:100%;height:auto">\n'
        f"<title>{escape(title)}</title>\n<desc>{escape(desc)}</desc>\n"
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>\n{body}\n</svg>'
    )
