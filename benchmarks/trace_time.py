"""Main-thread time from a Chromium trace (the events DevTools' Performance panel draws).

`main_thread(trace)` finds the renderer's main thread (CrRendererMain) that did the most work
and returns, in ms: `script` (the union of the JavaScript events' intervals: script
evaluation, function calls, microtasks such as promise reactions after a fetch, timers,
animation frames, DOM events, compilation and garbage collection; style or layout a script
forces inside them counts here too), `gc` (garbage collection, inside script or not),
`style_layout` (style recalculation and layout outside scripts), `tasks` (the union of the
thread's top-level tasks) and `longest_task`.
Performance.getMetrics' `ScriptDuration` is not used: it leaves out promise reactions, which
is where a page's fetch-then-render runs.
"""

from __future__ import annotations

import json
from collections import defaultdict

SCRIPT = frozenset({
    "EvaluateScript", "FunctionCall", "RunMicrotasks", "TimerFire", "FireAnimationFrame", "EventDispatch",
    "v8.compile", "v8.compileModule", "MinorGC", "MajorGC", "V8.GCScavenger", "V8.GCFinalizeMC",
    "v8.evaluateModule", "V8.Execute",
})
GC = frozenset({"MinorGC", "MajorGC", "V8.GCScavenger", "V8.GCFinalizeMC", "BlinkGC.AtomicPhase"})
STYLE_LAYOUT = frozenset({"UpdateLayoutTree", "Layout", "RecalculateStyles"})
TASK = "RunTask"


def _intervals(events: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """name -> [(start_us, end_us)] of complete ('X') and begin/end ('B'/'E') events."""
    found: dict[str, list[tuple[float, float]]] = defaultdict(list)
    open_: dict[str, list[float]] = defaultdict(list)
    for e in sorted(events, key=lambda e: e.get("ts", 0)):
        ph, name = e.get("ph"), e.get("name")
        if ph == "X":
            found[name].append((e["ts"], e["ts"] + e.get("dur", 0)))
        elif ph == "B":
            open_[name].append(e["ts"])
        elif ph == "E" and open_[name]:
            found[name].append((open_[name].pop(), e["ts"]))
    return found


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def _total(spans: list[tuple[float, float]]) -> float:
    return sum(e - s for s, e in spans)


def _minus(spans: list[tuple[float, float]], holes: list[tuple[float, float]]) -> float:
    """Time of `spans` (disjoint) outside `holes` (disjoint)."""
    total = _total(spans)
    for s, e in spans:
        for hs, he in holes:
            total -= max(0.0, min(e, he) - max(s, hs))
    return total


def main_thread(trace: bytes | str) -> dict[str, float]:
    events = json.loads(trace)
    events = events["traceEvents"] if isinstance(events, dict) else events
    mains = {(e["pid"], e["tid"]) for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"
             and e["args"].get("name") == "CrRendererMain"}
    by_thread: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        if (e.get("pid"), e.get("tid")) in mains:
            by_thread[(e["pid"], e["tid"])].append(e)
    best = dict.fromkeys(("script", "gc", "style_layout", "tasks", "longest_task"), 0.0)
    for thread in by_thread.values():
        spans = _intervals(thread)
        tasks = spans.get(TASK, [])
        script = _union([s for name in SCRIPT for s in spans.get(name, [])])
        layout = _union([s for name in STYLE_LAYOUT for s in spans.get(name, [])])
        result = {
            "script": _total(script) / 1000,
            "gc": _total(_union([s for name in GC for s in spans.get(name, [])])) / 1000,
            "style_layout": _minus(layout, script) / 1000,
            "tasks": _total(_union(tasks)) / 1000,
            "longest_task": max((e - s for s, e in tasks), default=0.0) / 1000,
        }
        if result["tasks"] > best["tasks"]:
            best = result
    return best
