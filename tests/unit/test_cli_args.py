"""The command line: numeric arguments refused by the parser when not finite and positive, errors told apart, and
--json on every command that answers."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from pitstop.cli import build_parser

_ARGS = [
    ["demo", "--duration", "{}"], ["demo", "--rate", "{}"], ["demo", "--speed", "{}"], ["demo", "--workers", "{}"],
    ["up", "--workers", "{}"], ["drill", "--model", "m", "--switch", "{}"], ["drill", "--model", "m", "--wait", "{}"],
    ["monitor", "--model", "m", "--windows", "{}"], ["triggers", "list", "--model", "m", "--limit", "{}"],
]


@pytest.mark.parametrize("args", _ARGS, ids=lambda a: " ".join(a[:-1]))
@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1", "1e999"])
def test_numeric_arguments_must_be_finite_and_positive(args: list[str], value: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`--rate inf`, `--wait nan`, `--windows 0` ... stop at the parser with one error line naming the argument,
    before anything starts or is written."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([a.format(value) for a in args])
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {args[-2]}:" in error and value in error, error


def test_an_unexpected_error_is_told_apart_from_an_unreachable_service() -> None:
    """main's last resort reads the error's kind (kafka-python 3 has no NoBrokersAvailable: asking for it raised an
    AttributeError in place of the error)."""
    from kafka.errors import KafkaConnectionError

    from pitstop.cli import _unreachable
    from pitstop.settings import Settings

    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    assert _unreachable(ValueError("a bug"), settings) is None
    assert "127.0.0.1:1" in (_unreachable(KafkaConnectionError("refused"), settings) or "")


def test_a_failed_up_quotes_its_own_log_lines_not_an_earlier_runs(tmp_path) -> None:
    """`up.log` is appended to by every `pitstop up --detach`: a failure quotes what this run wrote."""
    from pitstop.supervisor import _tail

    log = tmp_path / "up.log"
    log.write_text("ready     PITSTOP_KAFKA_BOOTSTRAP=127.0.0.1:1\nstopped\n")
    start = log.stat().st_size
    assert _tail(log, since=start) == "(nothing logged)"
    with log.open("a") as out:
        out.write("pitstop up: PostgreSQL did not start\n")
    assert _tail(log, since=start) == "pitstop up: PostgreSQL did not start"
    assert "ready" in _tail(log)


#: commands that run until stopped (their output is a log or a live console); `pitstop status --json` is their
#: machine-readable side
_LONG_RUNNING = {"up", "demo", "retrain-worker", "monitor-worker", "rollout-worker"}


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every leaf command of the parser, with its words."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix, parser
        return
    for name, sub in subparsers[0].choices.items():
        yield from _commands(sub, (*prefix, name))


def test_every_command_that_answers_has_json() -> None:
    """Each command that does something and returns takes --json (a script reads the answer, not the sentence)."""
    commands = dict(_commands(build_parser()))
    assert len(commands) > 25 and ("models", "trail") in commands  # the walk reaches nested commands
    missing = [" ".join(words) for words, parser in commands.items()
               if words[0] not in _LONG_RUNNING
               and not any("--json" in a.option_strings for a in parser._actions)]
    assert missing == []


@pytest.mark.parametrize(("args", "fragment"), [
    (["retrain", "--model"], "pitstop retrain: argument --model: expected one argument"),
    (["models", "show"], "pitstop models show: the following arguments are required: model"),
    (["nosuch"], "pitstop: argument command: invalid choice: 'nosuch'"),
    (["monitor", "status", "--model", "churn"], "pitstop monitor: unrecognized arguments: status"),
    (["models", "trail", "churn", "v2", "--bogus", "x"], "pitstop models trail: unrecognized arguments: --bogus x"),
    (["--bogus"], "pitstop: the following arguments are required: command"),
])
def test_a_usage_error_is_one_line_saying_what_to_do(args: list[str], fragment: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(args)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1 and err.startswith(fragment), err
    assert err.rstrip().endswith(f"`{fragment.split(':')[0]} --help` lists the arguments"), err
