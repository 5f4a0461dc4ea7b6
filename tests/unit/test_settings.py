"""Settings: defaults, the env file, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitstop.errors import ConfigError, ConfigFileError
from pitstop.settings import Settings


def test_defaults_without_services() -> None:
    """With nothing configured the services are unknown and the topics carry the default prefix."""
    s = Settings.from_env({"PITSTOP_STATE_DIR": "/nonexistent"})
    assert (s.kafka_bootstrap, s.database_url, s.external_kafka) == (None, None, False)
    assert s.topics.all() == ("pitstop.predictions", "pitstop.outcomes", "pitstop.dead-letter", "pitstop.monitoring",
                              "pitstop.retrain-triggers", "pitstop.candidates", "pitstop.deployments")
    with pytest.raises(ConfigError, match="PITSTOP_KAFKA_BOOTSTRAP"):
        s.require_services()


def test_env_file_fills_in_local_services_and_environment_wins(tmp_path: Path) -> None:
    """`.pitstop/env` names the local stack; variables in the environment override it and count as external."""
    (tmp_path / "env").write_text("PITSTOP_KAFKA_BOOTSTRAP=127.0.0.1:1\nPITSTOP_DATABASE_URL=postgresql://a@b/c\n")
    local = Settings.from_env({"PITSTOP_STATE_DIR": str(tmp_path)})
    assert (local.kafka_bootstrap, local.external_kafka, local.external_database) == ("127.0.0.1:1", False, False)
    ext = Settings.from_env({"PITSTOP_STATE_DIR": str(tmp_path), "PITSTOP_KAFKA_BOOTSTRAP": "k1:9092,k2:9092"})
    assert (ext.kafka_bootstrap, ext.external_kafka, ext.database_url) == ("k1:9092,k2:9092", True, "postgresql://a@b/c")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("PITSTOP_PARTITIONS", "0", "an integer between 1 and 1000"),
    ("PITSTOP_PARTITIONS", "x", "an integer between 1 and 1000"),
    ("PITSTOP_MONITOR_WORKERS", "0", "an integer between 1 and 64"),
    ("PITSTOP_MONITOR_WORKERS", "65", "an integer between 1 and 64"),
    ("PITSTOP_MAX_EVENT_BYTES", "-5", "an integer > 0"),
    ("PITSTOP_BATCH_WITHIN_S", "soon", "seconds > 0"),
    ("PITSTOP_DB_SCHEMA", "Robert'); DROP", "a lower-case SQL identifier"),
    ("PITSTOP_TOPIC_PREFIX", "a b", "letters, digits"),
    ("PITSTOP_KAFKA_BOOTSTRAP", "localhost", "host:port"),
    ("PITSTOP_DATABASE_URL", "sqlite:///x", "a postgresql:// URL"),
    ("PITSTOP_LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING or ERROR"),
    ("PITSTOP_FETCH_MAX_WAIT_MS", "0", "milliseconds between 1 and 10000"),
    ("PITSTOP_KAFKA_SESSION_TIMEOUT_S", "2", "seconds between 3 and 300"),
    ("PITSTOP_KAFKA_SESSION_TIMEOUT_S", "301", "seconds between 3 and 300"),
])
def test_bad_value_names_key_value_and_expectation(key: str, value: str, expected: str) -> None:
    """Each bad value fails at once with the key, the value and what was expected."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({key: value, "PITSTOP_STATE_DIR": "/nonexistent"})
    assert (info.value.key, info.value.value) == (key, value)
    assert str(info.value).startswith(f"{key}={value!r}: expected {expected}")


def test_a_bad_model_config_fails_at_start_naming_the_key(tmp_path) -> None:
    """PITSTOP_CONFIG pointing at a malformed file fails Settings with one line naming file and key."""
    bad = tmp_path / "pitstop.toml"
    bad.write_text('[models.churn]\ntask = "classification"\npositive_class = 1\nwindow = "7m"\n')
    with pytest.raises(ConfigFileError) as info:
        Settings.from_env({"PITSTOP_CONFIG": str(bad)})
    assert str(info.value).count("\n") == 0
    assert "models.churn.window = '7m'" in str(info.value)


def test_alert_webhook_is_an_http_url_or_nothing() -> None:
    """PITSTOP_ALERT_WEBHOOK is kept as given when http(s), None when absent or empty, else fails naming it."""
    base = {"PITSTOP_STATE_DIR": "/nonexistent"}
    assert Settings.from_env(base).alert_webhook is None
    assert Settings.from_env({**base, "PITSTOP_ALERT_WEBHOOK": ""}).alert_webhook is None
    url = "https://hooks.example.com/services/T0/B0/x"
    assert Settings.from_env({**base, "PITSTOP_ALERT_WEBHOOK": url}).alert_webhook == url
    for bad in ("ftp://hooks.example.com/x", "hooks.example.com/x", "http://", "https://a b/c"):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({**base, "PITSTOP_ALERT_WEBHOOK": bad})
        assert (info.value.key, info.value.value) == ("PITSTOP_ALERT_WEBHOOK", bad)
        assert str(info.value) == f"PITSTOP_ALERT_WEBHOOK={bad!r}: expected an http:// or https:// URL"


def test_alert_format_is_one_the_webhook_speaks() -> None:
    base = {"PITSTOP_STATE_DIR": "/nonexistent"}
    assert Settings.from_env(base).alert_format == "pitstop"
    assert Settings.from_env({**base, "PITSTOP_ALERT_FORMAT": "slack"}).alert_format == "slack"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**base, "PITSTOP_ALERT_FORMAT": "teams"})
    assert str(info.value) == "PITSTOP_ALERT_FORMAT='teams': expected pitstop or slack or alertmanager"


_SECONDS = ("PITSTOP_MONITOR_INTERVAL_S", "PITSTOP_ROLLOUT_INTERVAL_S", "PITSTOP_BATCH_WITHIN_S",
            "PITSTOP_MAX_FUTURE_SKEW_S", "PITSTOP_KAFKA_SESSION_TIMEOUT_S")
_COUNTS = ("PITSTOP_PARTITIONS", "PITSTOP_MAX_EVENT_BYTES", "PITSTOP_MAX_MESSAGE_BYTES", "PITSTOP_BATCH_MESSAGES",
           "PITSTOP_BATCH_BYTES", "PITSTOP_MAX_EVENTS_PER_TXN", "PITSTOP_FETCH_MAX_WAIT_MS", "PITSTOP_MONITOR_WORKERS")


@pytest.mark.parametrize("key", _SECONDS + _COUNTS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity", "0", "-1", "1e999"])
def test_every_numeric_setting_is_finite_and_positive(key: str, value: str) -> None:
    """Every numeric PITSTOP_* setting refuses infinity, NaN, zero and negatives at start, naming the key: an
    interval of inf would silently never run its rounds (a skew of 0 is allowed: no event ahead of the clock)."""
    if (key, value) == ("PITSTOP_MAX_FUTURE_SKEW_S", "0"):
        assert Settings.from_env({key: value, "PITSTOP_STATE_DIR": "/nonexistent"}).limits.max_future_skew_s == 0
        return
    with pytest.raises(ConfigError) as info:
        Settings.from_env({key: value, "PITSTOP_STATE_DIR": "/nonexistent"})
    assert (info.value.key, info.value.value) == (key, value)


def test_an_exported_env_file_is_the_local_stack_not_external_services(tmp_path: Path) -> None:
    """`.pitstop/env` exported by a shell names the local stack (PITSTOP_STACK_DIR): its addresses count as that
    stack's, read afresh from its env file (a restarted stack's new ports; none once it is down), never as external
    services; without the marker, addresses in the environment are external as before."""
    state = tmp_path / ".pitstop"
    state.mkdir()
    (state / "env").write_text("PITSTOP_KAFKA_BOOTSTRAP=127.0.0.1:2\nPITSTOP_DATABASE_URL=postgresql://p@h:2/d\n"
                               f"PITSTOP_STACK_DIR={state}\n")
    exported = {"PITSTOP_KAFKA_BOOTSTRAP": "127.0.0.1:1", "PITSTOP_DATABASE_URL": "postgresql://p@h:1/d",
                "PITSTOP_STACK_DIR": str(state)}  # sourced before the stack was restarted on other ports
    s = Settings.from_env(exported)
    assert (s.state_dir, s.external_kafka, s.external_database) == (state, False, False)
    assert (s.kafka_bootstrap, s.database_url) == ("127.0.0.1:2", "postgresql://p@h:2/d")
    (state / "env").unlink()  # `pitstop down`
    down = Settings.from_env(exported)
    assert (down.kafka_bootstrap, down.database_url, down.external_kafka) == (None, None, False)
    unmarked = Settings.from_env({k: v for k, v in exported.items() if k != "PITSTOP_STACK_DIR"} | {
        "PITSTOP_STATE_DIR": str(state)})
    assert (unmarked.kafka_bootstrap, unmarked.external_kafka) == ("127.0.0.1:1", True)
