"""`python -m pipeline`: the one command line of the ledger (see --help)."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys

from pipeline.invariants import refuse_optimized
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


def _topics(args: argparse.Namespace) -> int:
    import asyncio

    from pipeline import settings, topics

    s = settings.load()
    asyncio.run(topics.ensure_topics(s))
    print("\n".join(f"{t.name}: {t.partitions} partitions" for t in topics.specs(s)))
    return 0


def _redrive(args: argparse.Namespace) -> int:
    from pipeline import redrive

    return redrive.main(args)


def _acls(args: argparse.Namespace) -> int:
    from pipeline import acls

    return acls.main(args)


# The development and measurement commands live in the `tools` package, which the
# worker image leaves out (pyproject.toml, extra "tools").
TOOL_COMMANDS = {
    "dev": "local Kafka (KRaft) and Redis for development and tests",
    "run": "dev up, a worker, and a short simulated live event; prints balances and top creators",
    "simulate": "produce a seeded simulated live event to Kafka (rate, size, mega-live, bad input)",
    "bench": "run a benchmark; results go to bench/results/<date>-<scenario>.json, .md, .png",
    "fraud-eval": "precision, recall and detection delay of the fraud rules through the real pipeline",
    "soak": "a simulated live event against several workers with periodic SIGKILLs, then every invariant checked",
}


def _no_tools(args: argparse.Namespace) -> int:
    print(f"error: '{args.command}' is a tool, and the tools package is not installed here (the worker image "
          "holds the runtime only); run it from a checkout: pip install -e '.[tools]'", file=sys.stderr)
    return 2


def _tool_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    if importlib.util.find_spec("tools") is not None:
        from tools.cli import register

        register(sub, TOOL_COMMANDS)
        return
    for name, text in TOOL_COMMANDS.items():
        p = sub.add_parser(name, help=f"{text} (tools package)", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_no_tools)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Real-time coin and gift ledger on Kafka. Settings come from PIPELINE_* "
        "environment variables (docs/reference.md, 'Settings').",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", help="run a ledger worker (Faust app, HTTP read model on PIPELINE_WEB_PORT)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("topics", help="create the pipeline's topics (workers also do it at start)")
    p.set_defaults(func=_topics)

    _tool_commands(sub)

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
    refuse_optimized()
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
