"""`pitstop`: the operator's command line (up, down, status, migrate, topics, demo, monitor, reference, triggers,
retrain, retrain-worker, monitor-worker, rollout-worker, models, rollback, promote, pause, rollout clear, drill)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pitstop.errors import PitstopError
from pitstop.output import OUTPUT_CLOSED, reply, say, silence_stdout
from pitstop.settings import Settings


def _finite_positive(raw: str) -> float:
    """An argparse type: a finite number > 0 (``--wait inf`` would never end, ``--rate nan`` never send).

    >>> _finite_positive("2.5")
    2.5
    """
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        msg = f"{raw!r}: expected a finite number > 0"
        raise argparse.ArgumentTypeError(msg)
    return value


def _count(raw: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"{raw!r}: expected an integer >= 1"
        raise argparse.ArgumentTypeError(msg)
    return value


def _say(line: str) -> None:
    say(line)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop import supervisor

    if args.detach:
        return supervisor.run_detached(settings, args.workers, _say)
    return supervisor.run_foreground(settings, args.workers, _say)


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop import supervisor

    stopped = supervisor.take_down(settings)
    reply(_say, args.json, f"stopped: {', '.join(stopped)}" if stopped else "nothing was running", stopped=stopped)
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

    database_url = settings.require_database()
    applied = migrate(database_url, settings.db_schema)
    lines = [f"schema {settings.db_schema}: applied {', '.join(applied)}" if applied
             else f"schema {settings.db_schema}: up to date"]
    if settings.analyst_password is not None:  # the analysts' role gets its password (docker-compose's Grafana)
        from feedback.query import AnalystRoleMissing, analyst_url

        try:
            analyst_url(database_url, settings.db_schema, settings.analyst_password)
        except AnalystRoleMissing as exc:
            raise PitstopError(str(exc)) from None
        lines.append(f"schema {settings.db_schema}: the analysts' role has the password of PITSTOP_ANALYST_PASSWORD")
    if not args.json:
        for line in lines:
            _say(line)
    else:
        reply(_say, True, "; ".join(lines), schema=settings.db_schema, applied=applied,
              analyst_password_set=settings.analyst_password is not None)
    return 0


def cmd_db_prune(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from feedback.store.retention import PruneRunning, prune

    retention = timedelta(seconds=settings.monitoring.longest_retention_s)
    try:
        result = prune(settings.require_database(), settings.db_schema, retention=retention, dry_run=args.dry_run)
    except PruneRunning as exc:
        raise PitstopError(str(exc)) from None
    verb = "would drop" if args.dry_run else "dropped"
    drops = [s for s in result.steps if s.drop]
    pinned = [s for s in result.steps if s.kind in ("pinned", "foreign")]
    lines = [f"{verb} {s.partition.name} ({_rows_estimate(s.partition.rows)}): {s.reason}" for s in drops]
    lines += [f"kept {s.partition.name}: {s.reason}" for s in pinned]
    if result.cutoff is None:
        summary = f"{verb} 0 of {len(result.steps)} partitions: the store holds no prediction"
    else:
        within = len(result.steps) - len(drops) - len(pinned)
        summary = (f"{verb} {len(drops)} of {len(result.steps)} partitions; {within} within the retention "
                   f"({retention.days} days before the newest week of predictions, {result.watermark:%Y-%m-%d}: rows "
                   f"after {result.cutoff:%Y-%m-%d} kept)")
    if not args.dry_run and result.cutoff is not None:
        seconds = sum(result.seconds.values())
        summary += (f"; cleared {result.ids_cleared:,} ids' rows, {result.unmatched_labels:,} labels without a "
                    f"prediction and {result.dead_letters:,} dead letters past it, in {seconds:.1f} s")
    if args.json:
        reply(_say, True, summary, dry_run=args.dry_run, watermark=result.watermark, cutoff=result.cutoff,
              retention_days=retention.days,
              partitions=[{"table": s.partition.table, "name": s.partition.name, "week": s.partition.lower,
                           "rows_estimate": s.partition.rows, "drop": s.drop, "kind": s.kind, "reason": s.reason}
                          for s in result.steps],
              dropped=result.dropped, ids_cleared=result.ids_cleared, unmatched_labels=result.unmatched_labels,
              dead_letters=result.dead_letters, seconds=result.seconds)
    else:
        for line in [*lines, summary]:
            _say(line)
    return 0


def _rows_estimate(rows: int | None) -> str:
    return "rows not counted yet" if rows is None else f"about {rows:,} rows"


def cmd_analyst_url(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg

    from feedback.query import AnalystRoleMissing, analyst_url

    database_url = settings.require_reachable_database()
    try:
        url = analyst_url(database_url, settings.db_schema, settings.analyst_password)
    except AnalystRoleMissing as exc:
        raise PitstopError(str(exc)) from None
    except psycopg.errors.UndefinedFunction:
        msg = f"schema {settings.db_schema} has no analysts' role yet: run `pitstop migrate` first"
        raise PitstopError(msg) from None
    from feedback.store import analyst_role

    reply(_say, args.json, url, url=url, schema=settings.db_schema, role=analyst_role(settings.db_schema))
    return 0


DASHBOARD_PORT = 8765


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from pitstop.dashboard.app import Served, build_app

    database_url = settings.require_database()
    port = args.port
    if port == DASHBOARD_PORT and not _port_free(args.host, port):
        port = 0  # the default port is taken (another stack's dashboard): any free one
    try:
        served = Served(build_app(database_url, settings.db_schema, settings.monitoring), args.host, port)
    except OSError as exc:
        msg = f"{exc}: choose another --port"
        raise PitstopError(msg) from None
    if args.address_file is not None:
        part = args.address_file.with_suffix(".part")
        part.write_text(served.url)
        part.replace(args.address_file)
    reply(_say, args.json, f"dashboard on {served.url} (read-only; Ctrl-C stops it)", url=served.url)
    try:
        while served.thread.is_alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        served.stop()
    return 0


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop.stack import ensure_topics

    bootstrap = settings.require_reachable_kafka()
    ensure_topics(bootstrap, settings.topics.all(), settings.partitions, compacted=settings.topics.compacted())
    reply(_say, args.json,
          f"topics {', '.join(settings.topics.all())}: present ({settings.partitions} partitions when created)",
          topics=settings.topics.all(), partitions=settings.partitions, compacted=sorted(settings.topics.compacted()))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop import demo

    return demo.run(settings, duration_s=args.duration, rate=args.rate, speed=args.speed, workers=args.workers,
                    fast=args.fast)


def cmd_monitor(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop.monitoring_cli import monitor_report

    return monitor_report(settings, args.model, version=args.version, segment=args.segment, windows=args.windows,
                          as_json=args.json, say=_say)


def cmd_reference_import(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from pitstop.monitoring_cli import import_reference

    return import_reference(settings, args.model, args.version, Path(args.file), label_column=args.label_column,
                            prediction_column=args.prediction_column, score_column=args.score_column,
                            as_json=args.json, say=_say)


def cmd_triggers_list(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop.triggers_cli import list_decisions

    return list_decisions(settings, args.model, limit=args.limit, as_json=args.json, say=_say)


def cmd_triggers_reset(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop.triggers_cli import reset_breaker

    return reset_breaker(settings, args.model, by=args.by, as_json=args.json, say=_say)


def cmd_triggers_replay(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop.triggers_cli import replay_triggers

    return replay_triggers(settings, args.model, start=args.start, end=args.end, version=args.version,
                           overrides=args.overrides, as_json=args.json, say=_say)


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop.triggers_cli import request_retrain

    return request_retrain(settings, args.model, reason=args.reason, request_id=args.id, by=args.by,
                           wait_s=args.wait, as_json=args.json, say=_say)


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop.models_cli import list_models

    return list_models(settings, args.model, as_json=args.json, say=_say)


def cmd_models_show(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop.models_cli import show_model

    return show_model(settings, args.model, args.version, as_json=args.json, say=_say)


def cmd_models_trail(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop.models_cli import trail

    return trail(settings, args.model, args.version, as_json=args.json, say=_say)


def cmd_rollout_command(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop import rollout_cli

    command = "resume" if getattr(args, "resume", False) else args.rollout_verb
    return rollout_cli.run(settings, command, args.model, say=_say, as_json=args.json)


def cmd_verdict(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop import rollout_cli
    from pitstop.triggers_cli import check_by, check_reason

    extra = ({"reason": check_reason(args.reason, "the candidate must not ramp", "worse on the new tiers")}
             if args.command == "reject" else {})
    by = check_by(args.by) if args.by is not None else None
    command = "deploy_version" if args.command == "deploy" else args.command
    return rollout_cli.run(settings, command, args.model, say=_say, as_json=args.json, by=by, version=args.version,
                           **extra)


def cmd_drill(args: argparse.Namespace, settings: Settings) -> int:
    from pitstop import rollout_cli

    return rollout_cli.drill(settings, args.model, switch_s=args.switch, wait_s=args.wait, as_json=args.json,
                             say=_say)


def cmd_retrain_worker(args: argparse.Namespace, settings: Settings) -> int:
    from feedback.store import migrate
    from pitstop import retrain_service

    _, database_url = settings.require_services()
    migrate(database_url, settings.db_schema)
    return retrain_service.run(settings)


def cmd_monitor_worker(args: argparse.Namespace, settings: Settings) -> int:
    from feedback.store import migrate
    from pitstop import monitor_service

    _, database_url = settings.require_services()
    migrate(database_url, settings.db_schema)
    return monitor_service.run(settings)


def cmd_rollout_worker(args: argparse.Namespace, settings: Settings) -> int:
    # Faust runs only in streams/: this process becomes `python -m streams rollout-worker`, once the services are
    # known (an unset one is said here, in one line)
    settings.require_services()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "streams", "rollout-worker", f"--instance={args.instance}"])


def _json_flag(parser: argparse.ArgumentParser,
               text: str = "one JSON object instead of the sentence: what was done, with the sentence") -> None:
    parser.add_argument("--json", action="store_true", help=text)


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are one line saying what to do (its own are the usage, then the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; `{self.prog} --help` lists the arguments\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        """As argparse's, but an argument no command takes is the chosen command's error, pointing at its help
        (argparse reports it at the top: ``pitstop: unrecognized arguments``)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            _chosen(self, parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _chosen(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> argparse.ArgumentParser:
    """The deepest subcommand's parser that ``parsed`` chose under ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(parsed, action.dest, None) in action.choices:
            return _chosen(action.choices[getattr(parsed, action.dest)], parsed)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pitstop", description="Keep production models fresh.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the broker, database and ingest workers (local unless configured)")
    up.add_argument("--workers", type=_count, default=1, help="ingest worker processes in one consumer group")
    up.add_argument("--detach", action="store_true", help="return once ready; writes .pitstop/env")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop what `pitstop up` started, and only that")
    _json_flag(down)
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="what runs where, and whether it is healthy")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    mig = sub.add_parser("migrate", help="apply the database migrations to the configured database")
    _json_flag(mig)
    mig.set_defaults(func=cmd_migrate)
    db = sub.add_parser("db", help="the feedback store's upkeep").add_subparsers(dest="db_command", required=True)
    prune = db.add_parser("prune", help="drop the weekly partitions of predictions and outcomes past the retention "
                          "(the longest of the models' and [defaults] retention in PITSTOP_CONFIG, else 400 days)")
    prune.add_argument("--dry-run", action="store_true", help="say what would be dropped and kept, and why")
    _json_flag(prune)
    prune.set_defaults(func=cmd_db_prune)
    board = sub.add_parser("dashboard", help="serve the read-only web page of the fleet and each model")
    board.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    board.add_argument("--port", type=int, default=DASHBOARD_PORT,
                       help=f"the port (default {DASHBOARD_PORT}, or a free one when it is taken; 0: any free one)")
    board.add_argument("--address-file", type=Path, help=argparse.SUPPRESS)  # where `pitstop up` reads the URL
    _json_flag(board, "its address as one JSON object, then it serves")
    board.set_defaults(func=cmd_dashboard)
    analyst = sub.add_parser("analyst-url", help="the connection string of the analysts' read-only role (it reads "
                             "the documented views and nothing else)")
    _json_flag(analyst, "one JSON object: the URL, the schema and the role")
    analyst.set_defaults(func=cmd_analyst_url)
    top = sub.add_parser("topics", help="create the topics on the configured broker (final partition count)")
    _json_flag(top)
    top.set_defaults(func=cmd_topics)
    demo = sub.add_parser("demo", help="a synthetic model whose data drifts; shows the join filling up")
    demo.add_argument("--duration", type=_finite_positive, default=None, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--rate", type=_finite_positive, default=200.0, help="predictions per wall-clock second")
    demo.add_argument("--speed", type=_finite_positive, default=3600.0, help="event-time seconds per wall-clock second")
    demo.add_argument("--workers", type=_count, default=1)
    demo.add_argument("--fast", action="store_true", help="run both acts to the end, print the timeline, exit")
    demo.set_defaults(func=cmd_demo)
    mon = sub.add_parser("monitor", help="the current drift and performance tables of a model")
    mon.add_argument("--model", required=True)
    mon.add_argument("--version", default=None, help="one version (default: every version with a profile)")
    mon.add_argument("--segment", default="*", help="'*' for all traffic, or attribute=value")
    mon.add_argument("--windows", type=_count, default=12, help="performance windows to show")
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
    _json_flag(imp)
    imp.set_defaults(func=cmd_reference_import)
    trig = sub.add_parser("triggers", help="retrain decisions: list them, reset the circuit breaker, replay the rules")
    trig_sub = trig.add_subparsers(dest="triggers_command", required=True)
    tlist = trig_sub.add_parser("list", help="the model's retrain decisions, newest first")
    tlist.add_argument("--model", required=True)
    tlist.add_argument("--limit", type=_count, default=20, help="decisions to show (default 20)")
    tlist.add_argument("--json", action="store_true")
    tlist.set_defaults(func=cmd_triggers_list)
    treset = trig_sub.add_parser("reset", help="reset the circuit breaker: automatic retraining resumes")
    treset.add_argument("--model", required=True)
    treset.add_argument("--by", default=None, help="who resets it (default: the database user)")
    _json_flag(treset)
    treset.set_defaults(func=cmd_triggers_reset)
    treplay = trig_sub.add_parser(
        "replay", help="re-run the decision rules over stored windows and say when they would have fired; "
        "writes nothing")
    treplay.add_argument("--model", required=True)
    treplay.add_argument("--from", dest="start", required=True, metavar="T1",
                         help="event time: RFC 3339 or YYYY-MM-DD[THH:MM], UTC; each window within [T1, T2] is "
                         "looked at, at its end")
    treplay.add_argument("--to", dest="end", required=True, metavar="T2", help="event time, same forms")
    treplay.add_argument("--version", default=None,
                         help="the version to replay (default: the one with the newest windows in the range)")
    treplay.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a setting of the model's table for this replay, e.g. "
                         "triggers.performance.elevated=0.08 (repeatable)")
    treplay.add_argument("--json", action="store_true")
    treplay.set_defaults(func=cmd_triggers_replay)
    retrain = sub.add_parser("retrain", help="request a retrain by hand (exit code 1 when storm control holds it "
                             "back)")
    retrain.add_argument("--model", required=True)
    retrain.add_argument("--reason", required=True, help="why, in one line of at most 500 characters")
    retrain.add_argument("--id", default=None, help="request id (default: the UTC minute and a hash of the reason, "
                         "so a repeat within the minute is the same request)")
    retrain.add_argument("--by", default=None, help="who asks (default: the login name)")
    retrain.add_argument("--wait", type=_finite_positive, nargs="?", const=3600.0, default=None, metavar="S",
                         help="follow the training the request starts until its outcome, at most S seconds (default "
                         "3600), with a progress line on a terminal; exit code 1 when it was rejected or failed, "
                         "or had no outcome in time")
    _json_flag(retrain)
    retrain.set_defaults(func=cmd_retrain)
    worker = sub.add_parser("retrain-worker", help="answer retrain triggers: train, gate, register, publish "
                            "candidates (runs until Ctrl-C)")
    worker.add_argument("--instance", type=int, default=0, help=argparse.SUPPRESS)  # tells `pitstop up`'s apart
    worker.set_defaults(func=cmd_retrain_worker)
    monitor = sub.add_parser("monitor-worker", help="the monitor rounds and the retrain decisions, and the outbox "
                             "relay (runs until Ctrl-C)")
    monitor.add_argument("--instance", type=int, default=0, help=argparse.SUPPRESS)  # tells `pitstop up`'s apart
    monitor.set_defaults(func=cmd_monitor_worker)
    rollout = sub.add_parser("rollout-worker", help="take candidates through shadow evaluation: score live "
                             "predictions with them, judge them (runs until Ctrl-C)")
    rollout.add_argument("--instance", type=int, default=0, help=argparse.SUPPRESS)  # tells `pitstop up`'s apart
    rollout.set_defaults(func=cmd_rollout_worker)
    models = sub.add_parser("models", help="the model registry")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    mlist = models_sub.add_parser("list", help="registered versions, newest first per model")
    mlist.add_argument("--model", default=None)
    mlist.add_argument("--json", action="store_true")
    mlist.set_defaults(func=cmd_models_list)
    mshow = models_sub.add_parser("show", help="a version's stages, gate table and lineage")
    mshow.add_argument("model")
    mshow.add_argument("version", nargs="?", default=None, help="default: the newest")
    mshow.add_argument("--json", action="store_true")
    mshow.set_defaults(func=cmd_models_show)
    mtrail = models_sub.add_parser("trail", help="a version's chain: the decision, training, gates, shadow verdict, "
                                   "every ramp step, promotion or rollback")
    mtrail.add_argument("model")
    mtrail.add_argument("version")
    mtrail.add_argument("--json", action="store_true")
    mtrail.set_defaults(func=cmd_models_trail)
    for verb, text in (("rollback", "back to the champion: a ramp under way ends rolled back (latched); with none, "
                                    "the previous champion returns, in one message"),
                       ("promote", "the ramp's challenger becomes champion now"),
                       ("pause", "freeze the ramp at its share (rollback rules still apply); --resume goes on")):
        cmd = sub.add_parser(verb, help=text)
        cmd.add_argument("--model", required=True)
        if verb == "pause":
            cmd.add_argument("--resume", action="store_true", help="resume a paused ramp (its step's dwell restarts)")
        _json_flag(cmd)
        cmd.set_defaults(func=cmd_rollout_command, rollout_verb=verb)
    for verb, text in (("approve", "let a candidate ramp once its shadow passed (promotion = \"approval\")"),
                       ("reject", "end a candidate before its ramp, with a reason (promotion = \"approval\")"),
                       ("deploy", "make a registered version the champion now: a model's first deployment, or a "
                                  "person's hand (the same versioned deployment message as a ramp)")):
        cmd = sub.add_parser(verb, help=text)
        cmd.add_argument("--model", required=True)
        cmd.add_argument("--version", required=True)
        if verb == "reject":
            cmd.add_argument("--reason", required=True, help="why, in one line (the version's trail keeps it)")
        cmd.add_argument("--by", help="who decides (default: the user running the command)")
        _json_flag(cmd)
        cmd.set_defaults(func=cmd_verdict)
    rollout_group = sub.add_parser("rollout", help="the ramp's latch")
    rollout_sub = rollout_group.add_subparsers(dest="rollout_command", required=True)
    clear = rollout_sub.add_parser("clear", help="clear a latched rollback so that ramps of the model start again")
    clear.add_argument("--model", required=True)
    _json_flag(clear)
    clear.set_defaults(func=cmd_rollout_command, rollout_verb="clear")
    drill = sub.add_parser("drill", help="rehearse an automatic rollback: deploy a challenger that fails every "
                           "request, check the rollback fires and every router switches in time")
    drill.add_argument("--model", required=True)
    drill.add_argument("--switch", type=_finite_positive, default=30.0, metavar="S",
                       help="seconds every router has to switch after the rollback (default 30)")
    drill.add_argument("--wait", type=_finite_positive, default=300.0, metavar="S",
                       help="seconds to wait for the automatic rollback (default 300)")
    _json_flag(drill, "one JSON object at the end (whether it passed, the requests served, the rollback, the "
               "routers' switch) instead of the lines as it goes")
    drill.set_defaults(func=cmd_drill)
    return parser


def _unreachable(exc: Exception, settings: Settings) -> str | None:
    """One line for a database or broker that does not answer, or a schema not migrated (the driver's traceback says
    nothing to do), None for any other error."""
    import psycopg
    from kafka import errors as kafka_errors

    from pitstop.settings import unreachable_broker, unreachable_database

    if isinstance(exc, psycopg.OperationalError):
        return unreachable_database(settings.database_url or "", exc)
    if isinstance(exc, psycopg.errors.UndefinedTable):
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"schema {settings.db_schema}: {cause}; apply the migrations with `pitstop migrate`"
    # kafka-python 3 has no NoBrokersAvailable (2.x raised it where 3 raises KafkaConnectionError)
    unreachable = tuple(getattr(kafka_errors, name) for name in ("NoBrokersAvailable", "KafkaConnectionError",
                                                                   "KafkaTimeoutError") if hasattr(kafka_errors, name))
    if isinstance(exc, unreachable):
        return unreachable_broker(settings.kafka_bootstrap or "", exc)
    return None


#: commands that act on the models' configuration: refused when PITSTOP_CONFIG is not the running stack's
_USE_MODEL_CONFIG = ("demo", "monitor", "reference", "triggers", "retrain", "retrain-worker", "monitor-worker",
                     "rollout-worker", "rollback", "promote", "pause", "rollout", "drill")
#: commands that run until stopped, whose logs are for diagnosis
_WORKERS = ("up", "retrain-worker", "monitor-worker", "rollout-worker", "dashboard")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings: Settings | None = None
    try:
        settings = Settings.from_env()
        if settings.config_conflict is not None and args.command in _USE_MODEL_CONFIG:
            raise PitstopError(settings.config_conflict)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if settings.log_level != "DEBUG" and args.command not in _WORKERS:
            # a command's output is its lines, not its libraries' or its own modules' INFO logging (the controller
            # logs each step it takes for the workers' logs); warnings and errors still show
            logging.getLogger().setLevel(max(logging.getLevelName(settings.log_level), logging.WARNING))
        return int(args.func(args, settings))
    except PitstopError as exc:
        print(f"pitstop {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of stdout left (`| head`): silent, as any Unix command
        silence_stdout()
        if args.command in ("up", "demo"):  # ... but one that started a stack says it stopped it
            with contextlib.suppress(OSError):
                print(f"pitstop {args.command}: the output was closed; stopped", file=sys.stderr)
        return OUTPUT_CLOSED
    except Exception as exc:
        line = None if settings is None else _unreachable(exc, settings)
        if line is None:
            raise
        print(f"pitstop {args.command}: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
