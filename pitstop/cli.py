"""`pitstop`: the operator's command line (up, down, status, migrate, topics, demo, monitor, reference)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from pitstop.errors import PitstopError
from pitstop.settings import Settings


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop import supervisor

    if args.detach:
        return supervisor.run_detached(settings, args.workers, _say)
    return supervisor.run_foreground(settings, args.workers, _say)


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop import supervisor

    stopped = supervisor.take_down(settings)
    _say(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop import supervisor

    rows = supervisor.health(settings)
    if args.json:
        _say(json.dumps([{"component": c, "address": a, "healthy": h, "detail": d} for c, a, h, d in rows]))
    else:
        for component, address, healthy, detail in rows:
            _say(f"{component:<12} {'ok  ' if healthy else 'DOWN'}  {address:<42} {detail}")
    return 0 if rows and all(h for _, _, h, _ in rows) else 1


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from feedback.store import migrate

    _, database_url = settings.require_services()
    applied = migrate(database_url, settings.db_schema)
    _say(f"schema {settings.db_schema}: applied {', '.join(applied)}" if applied
         else f"schema {settings.db_schema}: up to date")
    return 0


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop.stack import ensure_topics

    bootstrap, _ = settings.require_services()
    ensure_topics(bootstrap, settings.topics.all(), settings.partitions)
    _say(f"topics {', '.join(settings.topics.all())}: present ({settings.partitions} partitions when created)")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop import demo

    return demo.run(settings, duration_s=args.duration, rate=args.rate, speed=args.speed, workers=args.workers)


def cmd_monitor(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop.monitoring_cli import monitor_report

    return monitor_report(settings, args.model, version=args.version, segment=args.segment, windows=args.windows,
                          as_json=args.json, say=_say)


def cmd_reference_import(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from pitstop.monitoring_cli import import_reference

    return import_reference(settings, args.model, args.version, Path(args.file), label_column=args.label_column,
                            prediction_column=args.prediction_column, score_column=args.score_column, say=_say)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pitstop", description="Keep production models fresh.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the broker, database and ingest workers (local unless configured)")
    up.add_argument("--workers", type=int, default=1, help="ingest worker processes in one consumer group")
    up.add_argument("--detach", action="store_true", help="return once ready; writes .pitstop/env")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop what `pitstop up` started, and only that")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="what runs where, and whether it is healthy")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    mig = sub.add_parser("migrate", help="apply the database migrations to the configured database")
    mig.set_defaults(func=cmd_migrate)
    top = sub.add_parser("topics", help="create the topics on the configured broker (final partition count)")
    top.set_defaults(func=cmd_topics)
    demo = sub.add_parser("demo", help="a synthetic model whose data drifts; shows the join filling up")
    demo.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--rate", type=float, default=200.0, help="predictions per wall-clock second")
    demo.add_argument("--speed", type=float, default=3600.0, help="event-time seconds per wall-clock second")
    demo.add_argument("--workers", type=int, default=1)
    demo.set_defaults(func=cmd_demo)
    mon = sub.add_parser("monitor", help="the current drift and performance tables of a model")
    mon.add_argument("--model", required=True)
    mon.add_argument("--version", default=None, help="one version (default: every version with a profile)")
    mon.add_argument("--segment", default="*", help="'*' for all traffic, or attribute=value")
    mon.add_argument("--windows", type=int, default=12, help="performance windows to show")
    mon.add_argument("--json", action="store_true")
    mon.set_defaults(func=cmd_monitor)
    ref = sub.add_parser("reference", help="reference profiles")
    ref_sub = ref.add_subparsers(dest="reference_command", required=True)
    imp = ref_sub.add_parser("import", help="profile a training set (CSV or Parquet) as a version's reference")
    imp.add_argument("--model", required=True)
    imp.add_argument("--version", required=True)
    imp.add_argument("--label-column", default=None, help="default: 'label' when present")
    imp.add_argument("--prediction-column", default=None, help="default: 'prediction' when present")
    imp.add_argument("--score-column", default=None)
    imp.add_argument("file")
    imp.set_defaults(func=cmd_reference_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "workers", 1) < 1:
        print("pitstop: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return int(args.func(args, settings))
    except PitstopError as exc:
        print(f"pitstop {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
