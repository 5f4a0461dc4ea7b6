"""The serving router's hash: stable, reproduced by a second implementation (coreutils' sha256sum), monotone as
the challenger's share grows; the newest deployment wins; the kill switch sends traffic to the champion."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitstop.router import (
    BUCKETS,
    Deployment,
    DeploymentError,
    KillSwitch,
    RouteTable,
    bucket,
    parse_deployment,
)

AT = datetime(2026, 3, 2, 12, tzinfo=UTC)


def deployment(version: int = 1, share: float = 0.05, *, model: str = "churn", salt: str = "r1",
               challenger: str | None = "v2") -> Deployment:
    return Deployment(model_name=model, message_version=version, champion="v1", challenger=challenger,
                      challenger_share=share, salt=salt, state="canary", decided_at=AT, reason="test")


def sha256sum_bucket(salt: str, key: str) -> int:
    """The documented rule through another implementation: coreutils' sha256sum over the same bytes."""
    out = subprocess.run(["sha256sum"], input=f"{salt}:{key}".encode(), capture_output=True, check=True).stdout
    return int(out.split()[0][:16], 16) % 10_000


@pytest.mark.parametrize(("salt", "key"), [("r1", "user-42"), ("rollout-2026-03-02", "7f3a"), ("s", ""),
                                           ("ünï", "клиент-9"), ("a:b", "c:d"), ("r1", "x" * 1000)])
def test_the_bucket_is_reproduced_by_a_second_implementation(salt: str, key: str) -> None:
    assert bucket(salt, key) == sha256sum_bucket(salt, key)


@settings(max_examples=200, deadline=None)
@given(salt=st.text(min_size=1, max_size=20), keys=st.lists(st.text(max_size=30), min_size=1, max_size=50),
       shares=st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_raising_the_share_only_moves_keys_to_the_challenger(salt: str, keys: list[str],
                                                             shares: tuple[float, float]) -> None:
    low, high = sorted(shares)
    before = {k: deployment(share=low, salt=salt).route(k) for k in keys}
    after = {k: deployment(share=high, salt=salt).route(k) for k in keys}
    assert {k for k, v in before.items() if v == "v2"} <= {k for k, v in after.items() if v == "v2"}
    assert before == {k: deployment(share=low, salt=salt).route(k) for k in keys}  # the same key, the same model


def test_the_share_of_keys_matches_the_challenger_share() -> None:
    """Of 20,000 keys, the challenger gets 5%, 25% and 50% within 1 point; 0 and 1 are exact."""
    keys = [f"user-{i}" for i in range(20_000)]
    for share in (0.05, 0.25, 0.5):
        got = sum(deployment(share=share).route(k) == "v2" for k in keys) / len(keys)
        assert got == pytest.approx(share, abs=0.01)
    assert {deployment(share=0.0).route(k) for k in keys[:500]} == {"v1"}
    assert {deployment(share=1.0).route(k) for k in keys[:500]} == {"v2"}
    assert deployment(share=0.05).threshold == 500 == round(0.05 * BUCKETS)


def test_a_new_salt_reshuffles_which_keys_go_first() -> None:
    keys = [f"user-{i}" for i in range(4_000)]
    first = {k for k in keys if deployment(share=0.1, salt="r1").route(k) == "v2"}
    second = {k for k in keys if deployment(share=0.1, salt="r2").route(k) == "v2"}
    assert len(first & second) < 0.3 * len(first)  # independent draws overlap by about 10%


def test_the_newest_message_version_wins_and_a_stale_one_is_ignored() -> None:
    table = RouteTable(KillSwitch({}))
    assert table.apply(deployment(1, 0.05))
    assert table.apply(deployment(3, 0.25))
    assert not table.apply(deployment(2, 0.10))  # late, stale
    assert not table.apply(deployment(3, 0.50))  # the same version again
    assert table.deployment("churn").challenger_share == 0.25 and table.ignored == 2
    with pytest.raises(LookupError, match="no deployment of model 'eta'"):
        table.route("eta", "k")


def test_the_kill_switch_sends_every_key_to_the_champion(tmp_path: Path) -> None:
    keys = [f"user-{i}" for i in range(200)]
    env: dict[str, str] = {}
    table = RouteTable(KillSwitch(env, every_s=0.0))
    table.apply(deployment(1, 1.0))
    assert {table.route("churn", k) for k in keys} == {"v2"}
    env["PITSTOP_KILL_SWITCH"] = "eta, churn"
    assert {table.route("churn", k) for k in keys} == {"v1"}
    env["PITSTOP_KILL_SWITCH"] = "eta"
    switch = tmp_path / "kill"
    env["PITSTOP_KILL_SWITCH_FILE"] = str(switch)
    assert {table.route("churn", k) for k in keys} == {"v2"}  # no file: no switch
    switch.write_text("")
    assert {table.route("churn", k) for k in keys} == {"v1"}  # an empty file: every model
    switch.write_text("eta\n")
    assert {table.route("churn", k) for k in keys} == {"v2"}


def test_the_kill_switch_file_is_read_at_most_once_a_second(tmp_path: Path) -> None:
    now = [0.0]
    switch = tmp_path / "kill"
    kill = KillSwitch({"PITSTOP_KILL_SWITCH_FILE": str(switch)}, clock=lambda: now[0])
    assert not kill.engaged("churn")
    switch.write_text("churn\n")
    now[0] = 0.5
    assert not kill.engaged("churn")  # not read again yet
    now[0] = 1.0
    assert kill.engaged("churn")


def test_a_message_round_trips_and_bad_ones_say_what_is_wrong() -> None:
    d = deployment(4, 0.25)
    assert parse_deployment(json.dumps(d.to_json()).encode()) == d
    bad = {**d.to_json(), "challenger_share": 1.5}
    with pytest.raises(DeploymentError, match=r"^schema: 1.5 is greater than the maximum of 1 \(at challenger_share\)"):
        parse_deployment(json.dumps(bad).encode())
    with pytest.raises(DeploymentError, match="both 'v1'"):
        parse_deployment(json.dumps({**d.to_json(), "challenger": "v1"}).encode())
    with pytest.raises(DeploymentError, match="has no offset"):
        parse_deployment(json.dumps({**d.to_json(), "decided_at": "2026-03-02T12:00:00"}).encode())
    with pytest.raises(DeploymentError, match="^not_json"):
        parse_deployment(b"{")
