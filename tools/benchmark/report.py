"""A benchmark's committed files: the JSON of every figure, a markdown table and a
chart (processed events per second and lag, or latency, over the run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUNS = ("ours", "ours_two_workers", "kstreams", "quix", "naive", "ceiling")


def write(stem: Path, result: dict[str, Any]) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(markdown(result))
    if any(isinstance(result["figures"].get(r), dict) and "timeline" in result["figures"][r] for r in RUNS):
        paths.append(stem.with_suffix(".png"))
        chart(paths[-1], result)
    return paths


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(result: dict[str, Any]) -> str:
    m, f = result["machine"], result["figures"]
    lines = [f"# {result['scenario']} ({result['date']})", "",
             f"Machine: {m['cores']} cores ({m.get('cpu', '?')}), {m['memory_gib']} GiB; Python {m['python']}, "
             f"Kafka {m.get('kafka', '?')} ({m.get('java', '?')}), aiokafka {m.get('aiokafka', '?')}, "
             f"faust-streaming {m.get('faust', '?')}. {m.get('note', '')}", ""]
    if result.get("settings"):
        lines += ["Settings given: " + ", ".join(f"`{k}={v}`" for k, v in sorted(result["settings"].items())), ""]
    runs = [r for r in RUNS if isinstance(f.get(r), dict)]
    if runs:
        cols = ["events", "events_per_s", "first_to_last_per_s", "gifts_per_s", "elapsed_s", "cpu_avg_pct",
                "events_per_cpu_s", "peak_rss_mb", "complete"]
        lines += ["| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {r} | " + " | ".join(_fmt(f[r].get(c, "")) for c in cols) + " |" for r in runs]
        lines.append("")
        lines += _spread_table(f, runs)
    rest = {k: v for k, v in f.items() if k not in RUNS and k != "timeline"}  # timelines: the JSON and chart
    for r in runs:  # run figures beyond the table (latency, recovery, board)
        rest.update({f"{r}.{k}": v for k, v in f[r].items() if k not in cols and k not in ("timeline", "spread")})
    lines += ["| figure | value |", "|---|---|"]
    for key, value in rest.items():
        if isinstance(value, dict) and "p99_ms" in value:
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
        lines.append(f"| {key} | {_fmt(value)} |")
    return "\n".join(lines) + "\n"


def _spread_table(f: dict[str, Any], runs: list[str]) -> list[str]:
    """Repeated runs: each engine's median, min and max, beside the median run the table
    above shows, so a ratio is read with the spread it comes from."""
    repeated = [r for r in runs if isinstance(f[r].get("spread"), dict)]
    if not repeated:
        return []
    lines = [f"Repeated runs, interleaved (ours, then each peer, {f.get('repeat', '')} rounds): the table above "
             "shows each engine's median run; the ratios compare medians.", "",
             "| run | runs | complete | median run | events_per_s median | min | max | events_per_cpu_s median "
             "| min | max |", "|---" * 11 + "|"]
    for r in repeated:
        sp = f[r]["spread"]
        cells = [sp["runs"], sp["complete_runs"], sp["median_run"]]
        for key in ("events_per_s", "events_per_cpu_s"):
            cells += [sp[key][q] if key in sp else "" for q in ("median", "min", "max")]
        lines.append(f"| {r} | " + " | ".join(_fmt(c) for c in cells) + " |")
    return [*lines, ""]


def chart(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = result["figures"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    latency = any("outcome_p99_ms" in row for row in f["ours"]["timeline"])
    for r in RUNS:
        timeline = f.get(r, {}).get("timeline") if isinstance(f.get(r), dict) else None
        if not timeline:
            continue
        t = [row["t"] for row in timeline]
        top.plot(t, [row["processed_per_s"] for row in timeline], label=r)
        if latency and r == "ours":
            for q in ("p50", "p99"):
                pts = [(row["t"], row[f"outcome_{q}_ms"]) for row in timeline if f"outcome_{q}_ms" in row]
                bottom.plot([p[0] for p in pts], [p[1] for p in pts], label=f"event to outcome {q}")
        elif not latency:
            bottom.plot(t, [row["lag"] for row in timeline], label=r)
    if "ceiling" in f:
        top.axhline(f["ceiling"]["events_per_s"], color="grey", linestyle="--", label="ceiling (read + decode)")
    top.set_yscale("symlog", linthresh=1_000)  # the ceiling is an order of magnitude above
    top.set_ylabel("events processed / s")
    bottom.set_ylabel("latency ms (by second sent)" if latency else "consumer lag (events)")
    bottom.set_xlabel("seconds since the run started")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{result['scenario']} — {result['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
