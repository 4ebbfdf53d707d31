"""`python -m pipeline fraud-eval`: precision, recall and detection delay of the fraud
rules, measured through the real pipeline (local Kafka, Redis and a worker).

The labelled set is either generated (seeded): ordinary traffic of established
viewers (each has recharged two days before; none is new), with labelled fraud
instances and near-misses of every rule injected (tools/simulate_fraud.py); or read
from files, so a set the project does not contain is measured the same way:

- `--events FILE`: JSON lines `{"topic": "gifts", "value": {...}}` (contract topics and
  values; `"key"` is optional and defaults to the value's key field), produced in order;
- `--labels FILE`: JSON lines `{"label": "fraud"|"near_miss", "pattern": RULE,
  "subject_id": ..., "event_ids": [...]}`.

An alert matches a fraud label of its rule when it names the label's subject or one of
its events. Per rule: TP = fraud labels matched, FN = fraud labels not matched, FP =
alerts matching no fraud label (on near-misses or ordinary traffic); precision =
matching alerts / alerts, recall = TP / fraud labels. Detection delay is from the
moment the triggering event (the alert's `details.trigger_event_id`) was produced to
the moment the committed alert was read: event time in a live stream, where events
are produced as they happen. (The generated set compresses two days of event time
into a minute of production, so event-time fields cannot be compared to the clock.)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from agents.fraud.thresholds import DAY_MS, RULES
from agents.ingest.decode import SPECS, decode
from pipeline import economics, settings
from pipeline.engine.stage import Malformed
from pipeline.settings import Settings
from tools import simulate_fraud
from tools.benchmark import RESULTS, cleanup, deployment, machine, runs
from tools.infra import dev
from tools.local_worker import running_worker
from tools.simulate import InputMessage, Message, SimConfig, generate, message

SETTLE_S = 3.0  # after the last outcome, for alerts still on their way (gift_loop, payouts)
MAX_WAIT_S = 600.0
HISTORY_COINS = 5_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instances", type=int, default=40, help="fraud instances per rule (default 40)")
    p.add_argument("--near-misses", type=int, default=40, help="near-misses per rule (default 40)")
    p.add_argument("--normal", type=int, default=100_000, help="ordinary events (default 100000)")
    p.add_argument("--rate", type=float, default=3_000, help="events produced per second (default 3000)")
    p.add_argument("--seed", type=int, default=11, help="random seed (default 11)")
    p.add_argument("--events", type=Path, help="measure this labelled set instead (with --labels)")
    p.add_argument("--labels", type=Path, help="labels of --events")
    p.add_argument("--export", type=Path, metavar="DIR",
                   help="write the generated set to DIR/events.jsonl and DIR/labels.jsonl and stop")
    p.add_argument("--out", type=Path, default=None,
                   help="results file stem (default bench/results/<date>-fraud-eval; external sets: none)")


# -- the labelled set ----------------------------------------------------------------------


def generated(args: argparse.Namespace, econ: economics.Economics) -> tuple[list[Message], list[dict[str, Any]]]:
    """Two days of ordinary traffic with the labelled instances merged in by event time."""
    start = int(time.time() * 1000) - 3 * DAY_MS
    span = 2 * DAY_MS
    cfg = SimConfig(events=args.normal, users=20_000, creators=500, seed=args.seed, zipf_s=1.1, start_ts=start,
                    tick_ms=max(1, span // max(1, args.normal)), max_gift_coins=5_000, id_prefix="n")
    # Established viewers: each recharged two days before the traffic starts.
    history = [message("recharges", {"event_id": f"nh{u}", "user_id": f"nu{u}", "coins": HISTORY_COINS,
                                                           "amount_cents": HISTORY_COINS, "currency": "USD",
                                                           "ts": start - 2 * DAY_MS}, "user_id")
               for u in range(cfg.users)]
    scripts = simulate_fraud.scripts(args.instances, args.near_misses, start, span, args.seed, prefix="x")
    return history + list(simulate_fraud.inject(generate(cfg, econ), scripts)), [s.label for s in scripts]


def read_set(events: Path, labels: Path) -> tuple[list[InputMessage], list[dict[str, Any]]]:
    messages: list[InputMessage] = []
    for n, line in enumerate(events.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            topic, value = row["topic"], row["value"]
            key = row.get("key", value.get(SPECS[topic][0]) if isinstance(value, dict) else None)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SystemExit(
                f"{events}:{n}: not {{\"topic\": <contract topic>, \"value\": {{...}}}} ({exc!r})"
            ) from None
        raw = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        messages.append((topic, None if key is None else str(key).encode(), raw.encode()))
    found = [json.loads(line) for line in labels.read_text().splitlines() if line.strip()]
    for n, label in enumerate(found, 1):
        if label.get("label") not in ("fraud", "near_miss") or label.get("pattern") not in RULES:
            raise SystemExit(f"{labels}:{n}: needs \"label\": fraud|near_miss and \"pattern\": one of {list(RULES)}")
    return messages, found


def export(messages: Sequence[InputMessage], labels: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "events.jsonl", "w") as f:
        for topic, key, value in messages:
            # A keyless record (external sets only) is written with "key": null, which read_set reads back as such.
            f.write(json.dumps({"topic": topic, "key": None if key is None else key.decode(),
                                "value": json.loads(value)}) + "\n")
    with open(out / "labels.jsonl", "w") as f:
        for label in labels:
            f.write(json.dumps(label) + "\n")


# -- the run --------------------------------------------------------------------------------


async def run(
    s: Settings, messages: Sequence[InputMessage], log_dir: Path, rate: float
) -> tuple[list[tuple[float, dict[str, Any]]], dict[bytes, float]]:
    """Produce the set to a worker; every alert with the time it was read, and the
    time each event was produced (perf_counter)."""
    sent_at: dict[bytes, float] = {}
    alerts: list[tuple[float, dict[str, Any]]] = []
    outcomes = 0
    expected = sum(1 for t, k, v in messages if not isinstance(decode(t, k, v), Malformed))  # one outcome each
    with running_worker(s, log_dir / "fraud-eval-worker.log", runs.worker_env(s, s.web_port)):
        consumer = AIOKafkaConsumer(s.topic("fraud-alerts"), s.topic("ledger-outcomes"), **s.kafka_options(),
                                    isolation_level="read_committed", auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            producing = asyncio.ensure_future(runs.produce(s, messages, rate, sent_at))
            last = time.perf_counter()
            deadline = time.monotonic() + MAX_WAIT_S + len(messages) / rate
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                for tp, records in batch.items():
                    if tp.topic.endswith("fraud-alerts"):
                        alerts.extend((now, json.loads(r.value)) for r in records)
                    else:
                        outcomes += len(records)
                    last = now
                if producing.done() and outcomes >= expected and now - last >= SETTLE_S:
                    break
            await producing
        finally:
            await consumer.stop()
    if outcomes < expected:
        raise SystemExit(f"only {outcomes} of {expected} outcomes after the wait; see {log_dir}")
    return alerts, sent_at


def score(labels: list[dict[str, Any]], alerts: list[tuple[float, dict[str, Any]]],
          sent_at: dict[bytes, float]) -> dict[str, Any]:
    """Per rule: TP, FP, FN, precision, recall and detection delay (see the module doc)."""
    figures: dict[str, Any] = {}
    for rule in RULES:
        frauds = [lab for lab in labels if lab["pattern"] == rule and lab["label"] == "fraud"]
        mine = [(at, a) for at, a in alerts if a["rule"] == rule]
        detected: dict[int, float] = {}  # fraud label index -> first detection delay (s)
        matching = 0
        false: list[dict[str, Any]] = []
        for at, a in sorted(mine, key=lambda x: x[0]):
            hits = [i for i, lab in enumerate(frauds) if _matches(a, lab)]
            matching += bool(hits)
            if not hits:
                false.append({k: a[k] for k in ("alert_id", "subject_id", "details")})
            trigger = sent_at.get(str(a["details"].get("trigger_event_id", "")).encode())
            for i in hits:
                if i not in detected and trigger is not None:
                    detected[i] = at - trigger
        delays = sorted(detected.values())
        figures[rule] = {
            "fraud_instances": len(frauds),
            "near_misses": sum(1 for lab in labels if lab["pattern"] == rule and lab["label"] == "near_miss"),
            "alerts": len(mine), "tp": len(detected), "fp": len(mine) - matching, "fn": len(frauds) - len(detected),
            "precision": round(matching / len(mine), 3) if mine else None,
            "recall": round(len(detected) / len(frauds), 3) if frauds else None,
            "delay_ms": runs.percentiles(delays) if delays else None,
            "false_positives": false[:20],
            "missed": [{k: lab.get(k) for k in ("subject_id", "first_ts")}
                       for i, lab in enumerate(frauds) if i not in detected][:20],
        }
    return figures


def _matches(alert: dict[str, Any], label: dict[str, Any]) -> bool:
    return (alert["subject_id"] == label.get("subject_id")
            or bool(set(alert["event_ids"]) & set(label.get("event_ids", ()))))


TARGETS = {"precision": 0.95, "recall": 0.95, "delay_p99_ms": 2_000}


def verdict(rule: dict[str, Any]) -> bool:
    delay = rule["delay_ms"] or {}
    return ((rule["precision"] or 0) >= TARGETS["precision"] and (rule["recall"] or 0) >= TARGETS["recall"]
            and delay.get("p99_ms", float("inf")) < TARGETS["delay_p99_ms"])


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Fraud evaluation, {result['date']}", "", result["set"], "",
             "| rule | fraud | near-misses | alerts | TP | FP | FN | precision | recall "
             "| delay p50 | delay p99 | targets met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rule, r in result["rules"].items():
        d = r["delay_ms"] or {}
        lines.append(f"| {rule} | {r['fraud_instances']} | {r['near_misses']} | {r['alerts']} | {r['tp']} | "
                     f"{r['fp']} | {r['fn']} | {r['precision']} | {r['recall']} | "
                     f"{d.get('p50_ms', '-')} ms | {d.get('p99_ms', '-')} ms | "
                     f"{'yes' if verdict(r) else 'no'} |")
    lines += ["", f"Targets: precision >= {TARGETS['precision']}, recall >= {TARGETS['recall']}, "
              f"detection delay p99 < {TARGETS['delay_p99_ms']} ms. Alerts on ordinary traffic: "
              f"{result['alerts_on_unlabelled']}. Command: `{result['command']}`."]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    base = settings.load()
    econ = economics.load(base.economics_file)
    messages: Sequence[InputMessage]
    if args.events or args.labels:
        if not (args.events and args.labels):
            raise SystemExit("--events and --labels go together")
        messages, labels = read_set(args.events, args.labels)
        described = f"External set: {args.events} ({len(messages)} events), {args.labels} ({len(labels)} labels)."
    else:
        messages, labels = generated(args, econ)
        described = (f"Generated set (seed {args.seed}): {args.normal} ordinary events of 20,000 established "
                     f"viewers and 500 creators over two days of event time, {args.instances} fraud instances and "
                     f"{args.near_misses} near-misses of each rule; {len(messages)} events produced "
                     f"at {args.rate:.0f}/s.")
    if args.export:
        export(messages, labels, args.export)
        print(f"written {args.export / 'events.jsonl'} and {args.export / 'labels.jsonl'}")
        return 0
    print("\n".join(dev.up(base)))
    log_dir = base.data_dir / "bench"
    s = deployment(base, "fraud")
    try:
        alerts, sent_at = asyncio.run(run(s, messages, log_dir, args.rate))
    finally:
        cleanup(s)
    unlabelled = sum(1 for _, a in alerts if not any(_matches(a, lab) for lab in labels))
    result: dict[str, Any] = {"scenario": "fraud-eval", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "machine": machine(), "set": described, "command": _command(args),
              "events": len(messages), "alerts": len(alerts), "alerts_on_unlabelled": unlabelled,
              "rules": score(labels, alerts, sent_at), "targets": TARGETS}
    result["all_targets_met"] = all(verdict(r) for r in result["rules"].values())
    print(markdown(result))
    stem = args.out or (None if args.events else RESULTS / f"{dt.date.today().isoformat()}-fraud-eval")
    if stem is not None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(result) + "\n")
        print(f"written {stem}.json and .md")
    return 0 if result["all_targets_met"] else 1


def _command(args: argparse.Namespace) -> str:
    parts = ["python -m pipeline fraud-eval"]
    names = ("events", "labels", "rate") if args.events else ("instances", "near_misses", "normal", "rate", "seed")
    for name in names:
        value = getattr(args, name)
        if value is not None:
            parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)

