"""`python -m pipeline`: the one command line of the ledger (see --help)."""

from __future__ import annotations

import argparse
import gc
import sys

from pipeline.settings import ConfigError


def _worker(args: argparse.Namespace) -> int:
    from faust.worker import Worker

    from pipeline import economics, settings
    from pipeline.app import create_app, preflight

    s = settings.load()
    econ = economics.load(s.economics_file)
    preflight(s)
    # A batch allocates ~100 objects per event and frees them: with the default
    # thresholds the collector ran 8,000 times in a 30 s benchmark (13 % of the time);
    # at 50,000 it runs ~60 times, and the state it would scan lives in RocksDB.
    gc.set_threshold(50_000, 20, 100)
    app = create_app(s, econ)
    worker = Worker(app, loglevel=s.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # exits the process
    return 0


def _dev(args: argparse.Namespace) -> int:
    from pipeline import settings
    from pipeline.infra import dev

    s = settings.load()
    lines = {"up": dev.up, "down": dev.down, "status": dev.status}[args.action](s)
    print("\n".join(lines))
    return 0


def _topics(args: argparse.Namespace) -> int:
    import asyncio

    from pipeline import settings, topics

    s = settings.load()
    asyncio.run(topics.ensure_topics(s))
    print("\n".join(f"{t.name}: {t.partitions} partitions" for t in topics.specs(s)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from pipeline import demo

    return demo.main(args)


def _simulate(args: argparse.Namespace) -> int:
    from pipeline import simulate_cli

    return simulate_cli.main(args)


def _bench(args: argparse.Namespace) -> int:
    from pipeline import benchmark

    return benchmark.main(args)


def _fraud_eval(args: argparse.Namespace) -> int:
    from pipeline import fraud_eval

    return fraud_eval.main(args)


def _soak(args: argparse.Namespace) -> int:
    from pipeline import soak

    return soak.main(args)


def _redrive(args: argparse.Namespace) -> int:
    from pipeline import redrive

    return redrive.main(args)


def _acls(args: argparse.Namespace) -> int:
    from pipeline import acls

    return acls.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Real-time coin and gift ledger on Kafka. Settings come from PIPELINE_* "
        "environment variables (README, 'Settings').",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", help="run a ledger worker (Faust app, HTTP read model on PIPELINE_WEB_PORT)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("dev", help="local Kafka (KRaft) and Redis for development and tests")
    p.add_argument("action", choices=("up", "down", "status"), help="start (idempotent), stop, or show them")
    p.set_defaults(func=_dev)

    p = sub.add_parser("topics", help="create the pipeline's topics (workers also do it at start)")
    p.set_defaults(func=_topics)

    p = sub.add_parser("run", help="dev up, a worker, and a short simulated live event; prints balances and top creators")
    p.add_argument("--events", type=int, default=5000, help="events to simulate (default 5000)")
    p.add_argument("--users", type=int, default=200, help="distinct viewers (default 200)")
    p.add_argument("--creators", type=int, default=20, help="distinct creators (default 20)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--watch", action="store_true",
                   help="keep the worker running afterwards, for the live dashboard, until Ctrl-C")
    p.set_defaults(func=_run)

    p = sub.add_parser("simulate", help="produce a seeded simulated live event to Kafka (rate, size, mega-live, bad input)")
    from pipeline.simulate_cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=_simulate)

    p = sub.add_parser("bench", help="run a benchmark; results go to bench/results/<date>-<scenario>.json, .md, .png")
    p.add_argument("scenario", choices=("uniform", "mega-live", "latency", "state", "leaderboard-read", "dedupe"),
                   help="what to measure (see pipeline/benchmark/__init__.py)")
    p.add_argument("--events", type=int, default=0, help="events (default: 200000; state: 10000000)")
    p.add_argument("--rate", type=float, default=5_000, help="latency: offered gifts per second (default 5000)")
    p.add_argument("--duration", type=float, default=30, help="latency: seconds of offered load (default 30)")
    p.add_argument("--gifters", type=int, default=100_000, help="leaderboard-read: gifters on the board (default 100000)")
    p.add_argument("--requests", type=int, default=2_000, help="leaderboard-read: reads per case (default 2000)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--peers", default="kstreams,quix", type=lambda v: [x for x in v.split(",") if x],
                   help="uniform, mega-live: peer engines run beside ours (bench/peers/; default kstreams,quix; '' for none)")
    p.add_argument("--days", type=float, default=10.0, help="dedupe: simulated days of commits (default 10)")
    p.set_defaults(func=_bench)

    p = sub.add_parser("fraud-eval", help="precision, recall and detection delay of the fraud rules through the "
                       "real pipeline; results go to bench/results/<date>-fraud-eval.json, .md")
    from pipeline.fraud_eval import add_arguments as fraud_eval_arguments

    fraud_eval_arguments(p)
    p.set_defaults(func=_fraud_eval)

    p = sub.add_parser("soak", help="a simulated live event against several workers with periodic SIGKILLs, then "
                       "every invariant checked; results go to bench/results/<date>-soak.json, .md")
    from pipeline.soak import add_arguments as soak_arguments

    soak_arguments(p)
    p.set_defaults(func=_soak)

    p = sub.add_parser("redrive", help="send dead letters back to their source topic after a fix (dry run unless "
                       "--apply; safe to repeat)")
    from pipeline.redrive import add_arguments as redrive_arguments

    redrive_arguments(p)
    p.set_defaults(func=_redrive)

    p = sub.add_parser("acls", help="print the Kafka ACLs of a deployment (pipeline, producing services, readers); "
                       "--apply creates the missing ones (safe to repeat)")
    from pipeline.acls import add_arguments as acls_arguments

    acls_arguments(p)
    p.set_defaults(func=_acls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
