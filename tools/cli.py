"""The tool commands of `python -m pipeline`, registered by pipeline/__main__.py when
this package is installed."""

from __future__ import annotations

import argparse
from typing import Any


def _dev(args: argparse.Namespace) -> int:
    from pipeline import settings
    from tools.infra import dev

    s = settings.load()
    lines = {"up": dev.up, "down": dev.down, "status": dev.status}[args.action](s)
    print("\n".join(lines))
    return 0


def _run(args: argparse.Namespace) -> int:
    from tools import demo

    return demo.main(args)


def _simulate(args: argparse.Namespace) -> int:
    from tools import simulate_cli

    return simulate_cli.main(args)


def _bench(args: argparse.Namespace) -> int:
    from tools import benchmark

    return benchmark.main(args)


def _fraud_eval(args: argparse.Namespace) -> int:
    from tools import fraud_eval

    return fraud_eval.main(args)


def _soak(args: argparse.Namespace) -> int:
    from tools import soak

    return soak.main(args)


def register(sub: argparse._SubParsersAction[Any], helps: dict[str, str]) -> None:
    p = sub.add_parser("dev", help=helps["dev"])
    p.add_argument("action", choices=("up", "down", "status"), help="start (idempotent), stop, or show them")
    p.set_defaults(func=_dev)

    p = sub.add_parser("run", help=helps["run"])
    p.add_argument("--events", type=int, default=5000, help="events to simulate (default 5000)")
    p.add_argument("--users", type=int, default=200, help="distinct viewers (default 200)")
    p.add_argument("--creators", type=int, default=20, help="distinct creators (default 20)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--watch", action="store_true",
                   help="keep the worker running afterwards, for the live dashboard, until Ctrl-C")
    p.set_defaults(func=_run)

    from tools.simulate_cli import add_arguments

    p = sub.add_parser("simulate", help=helps["simulate"])
    add_arguments(p)
    p.set_defaults(func=_simulate)

    p = sub.add_parser("bench", help=helps["bench"])
    p.add_argument("scenario",
                   choices=("uniform", "mega-live", "latency", "state", "leaderboard-read", "dedupe", "index"),
                   help="what to measure (see tools/benchmark/__init__.py); index: regenerate the results index "
                   "of docs/benchmarks.md")
    p.add_argument("--events", type=int, default=0, help="events (default: 200000; state: 10000000)")
    p.add_argument("--rate", type=float, default=5_000, help="latency: offered gifts per second (default 5000)")
    p.add_argument("--duration", type=float, default=30, help="latency: seconds of offered load (default 30)")
    p.add_argument("--gifters", type=int, default=100_000,
                   help="leaderboard-read: gifters on the board (default 100000)")
    p.add_argument("--requests", type=int, default=2_000, help="leaderboard-read: reads per case (default 2000)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--peers", default="kstreams,quix", type=lambda v: [x for x in v.split(",") if x],
                   help="uniform, mega-live: peer engines run beside ours "
                        "(bench/peers/; default kstreams,quix; '' for none)")
    p.add_argument("--days", type=float, default=10.0, help="dedupe: simulated days of commits (default 10)")
    from tools.broken import BREAKAGES

    p.add_argument("--broken", metavar="NAME", default=None, choices=sorted(BREAKAGES),
                   help="uniform, mega-live: our workers run from a copy of the tree with this deliberate fault "
                        "(tools/broken.py); the run must fail (exit 1)")
    p.add_argument("--repeat", type=int, default=1,
                   help="uniform, mega-live: ours and each peer N times, interleaved; median, min, max (default 1)")
    p.set_defaults(func=_bench)

    from tools.fraud_eval import add_arguments as fraud_eval_arguments

    p = sub.add_parser("fraud-eval",
                       help=helps["fraud-eval"] + "; results go to bench/results/<date>-fraud-eval.json, .md")
    fraud_eval_arguments(p)
    p.set_defaults(func=_fraud_eval)

    from tools.soak import add_arguments as soak_arguments

    p = sub.add_parser("soak", help=helps["soak"] + "; results go to bench/results/<date>-soak.json, .md")
    soak_arguments(p)
    p.set_defaults(func=_soak)
