"""The strategies of one environment and worker start delay side by side: first-executor
median and p90, idle worker-seconds, each strategy's median against the static pool's
(and the original policy's against the scaler's) with the paired 90% interval, and, for
a run with a worker start delay, the cold-start targets, and for one without, the
fast-start targets of the user-aware pre-warm against the original policy."""

from __future__ import annotations

from .analysis import first_executor_samples, median_ratio_interval

#: the order of the rows, and what each strategy is
STRATEGY_NAMES = {"static": "static pool", "original": "original policy",
                  "reactive": "scaler without pre-warm", "scaler": "scaler with pre-warm"}


def setting(row: dict) -> tuple[str, str]:
    """(environment, worker start delay spec or ""): rows compared together share it."""
    return row["environment"], row.get("worker_start_delay") or ""


def ratio(a: dict | None, b: dict | None) -> tuple[float, float, float, int, bool] | None:
    """a's first-executor median over b's, with its 90% interval, how many sessions, paired."""
    if not (a and b and a.get("ttfe_median") and b.get("ttfe_median")):
        return None
    samples = first_executor_samples(a, b)
    if not samples or not samples[0] or not samples[1]:
        return a["ttfe_median"] / b["ttfe_median"], float("nan"), float("nan"), 0, False
    x, y, paired = samples
    value, low, high = median_ratio_interval(x, y, paired=paired)
    return value, low, high, len(x), paired


def _ratio_text(r) -> str:
    if r is None:
        return "–"
    value, low, high, n, paired = r
    if n == 0:
        return f"{value:.2f}x"
    return f"{value:.2f}x ({low:.2f} to {high:.2f}{', ' + str(n) + ' paired' if paired else ''})"


def comparison_lines(summaries: list[dict]) -> list[str]:
    """Per environment and start delay with two or more strategies: one table, then the
    cold-start targets when the workers started late."""
    lines = []
    for key in dict.fromkeys(setting(s) for s in summaries):
        rows = {s["strategy"]: s for s in summaries if setting(s) == key}
        if len(rows) < 2:
            continue
        env, delay = key
        static = rows.get("static")
        lines += [f"{env}, worker start delay {delay or 'none'}: first executor against the static pool's "
                  "(median ratio, 90% bootstrap interval over the paired sessions)", "",
                  "| strategy | first executor median s | p90 s | idle worker-s | median vs static |",
                  "|---|---:|---:|---:|---:|"]
        for name in (n for n in STRATEGY_NAMES if n in rows):
            s = rows[name]
            cells = [STRATEGY_NAMES[name], *(_cell(s.get(k)) for k in ("ttfe_median", "ttfe_p90",
                                                                       "idle_worker_seconds")),
                     _ratio_text(ratio(s, static))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if delay:
            lines += [cold_start_targets(rows), ""]
        elif "scaler" in rows and "original" in rows:
            lines += [fast_start_targets(rows), ""]
    return lines


def _cell(value) -> str:
    return "–" if value is None else str(value)


def cold_start_targets(rows: dict[str, dict]) -> str:
    """The targets at a worker start delay: the scaler's first-executor median within 10%
    of the static pool's, the original policy's at least 1.5x the scaler's, the scaler's
    idle worker-seconds at most 30% of the static pool's."""
    scaler, static, original = rows.get("scaler"), rows.get("static"), rows.get("original")
    checks = []
    if (r := ratio(scaler, static)) is not None:
        checks.append((f"scaler's median within 10% of the static pool's ({_ratio_text(r)})", r[0] <= 1.10))
    if (r := ratio(original, scaler)) is not None:
        checks.append((f"original policy's median >= 1.5x the scaler's ({_ratio_text(r)})", r[0] >= 1.5))
    if scaler and static and static.get("idle_worker_seconds"):
        idle = scaler["idle_worker_seconds"] / static["idle_worker_seconds"]
        checks.append((f"scaler's idle worker-s <= 30% of the static pool's ({idle:.0%})", idle <= 0.30))
    if not checks:
        return "- cold-start targets: not enough strategies in this run to check them."
    return "- cold-start targets: " + "; ".join(
        f"{what}: {'met' if ok else '**missed**'}" for what, ok in checks) + "."


def fast_start_targets(rows: dict[str, dict]) -> str:
    """The targets with workers that start at once: the scaler's idle worker-seconds at most
    1.5x the original policy's, its first-executor median no worse than the original's."""
    scaler, original = rows["scaler"], rows["original"]
    checks = []
    if original.get("idle_worker_seconds"):
        idle = scaler["idle_worker_seconds"] / original["idle_worker_seconds"]
        checks.append((f"scaler's idle worker-s <= 1.5x the original policy's ({idle:.2f}x)", idle <= 1.5))
    if (r := ratio(scaler, original)) is not None:
        checks.append((f"scaler's first executor no later than the original policy's ({_ratio_text(r)})",
                       r[0] <= 1.0))
    return "- fast-start targets: " + "; ".join(
        f"{what}: {'met' if ok else '**missed**'}" for what, ok in checks) + "."
