"""The workers' metrics follow Prometheus's conventions, and what they count is what happened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from feedback import metrics

#: the labels a series may carry: the model, version and segment, and small closed sets (a status, a kind, ...)
BOUNDED = {"model", "version", "segment", "status", "kind", "outcome", "reason", "change", "stage", "topic",
           "partition"}


def test_every_metric_follows_the_conventions() -> None:
    ours = [m for m in vars(metrics).values() if isinstance(m, Counter | Gauge | Histogram)]
    assert len(ours) >= 14
    for metric in ours:
        name = metric._name
        assert name.startswith("pitstop_"), name
        assert set(metric._labelnames) <= BOUNDED, (name, metric._labelnames)
        if isinstance(metric, Histogram):
            assert name.endswith(("_seconds", "_bytes", "_messages")), name  # a base unit, or what is counted
    metrics.TRAININGS.labels("churn", "candidate").inc(0)  # a sample of a labelled counter, to see its name
    counted = [s.name for f in REGISTRY.collect() if f.type == "counter" and f.name.startswith("pitstop_")
               for s in f.samples]
    assert "pitstop_trainings_total" in counted and all(n.endswith(("_total", "_created")) for n in counted)


def test_windows_count_degraded_over_drift_over_stable() -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    drift = [SimpleNamespace(segment=seg, metric="drift", window_start=t0 + timedelta(hours=h), status=status)
             for seg, h, status in [("*", 0, "stable"), ("*", 0, "stable"), ("*", 1, "drift"), ("*", 1, "stable"),
                                    ("*", 2, "drift"), ("*", 3, "unjudged"), ("eu", 3, "drift"), ("*", 4, "stable"),
                                    ("*", 4, "unjudged")]]
    performance = [SimpleNamespace(segment="*", metric="accuracy", window_start=t0 + timedelta(hours=h), status=s)
                   for h, s in [(2, "degraded"), (4, "ok"), (5, "degraded")]]
    performance.append(SimpleNamespace(segment="*", metric="f1", window_start=t0, status="degraded"))
    evaluation = SimpleNamespace(drift=drift, performance=performance)
    assert metrics.count_windows(evaluation, "accuracy") == {"degraded": 2, "drift": 1, "stable": 2,  # type: ignore[arg-type]
                                                             "unjudged": 1}


def test_a_batch_counts_its_messages_joins_and_dead_letters_by_reason_category() -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {"batches": value("pitstop_ingest_batch_messages_count"), "messages": value(
        "pitstop_ingest_batch_messages_sum"), "bytes": value("pitstop_ingest_batch_bytes_sum"),
        "p": value("pitstop_events_total", kind="prediction"), "schema": value(
        "pitstop_dead_letters_total", reason="schema"), "set": value("pitstop_labels_joined_total", change="set")}
    result = SimpleNamespace(stats=SimpleNamespace(predictions=3, outcomes=2, labels_set=2, labels_corrected=1),
                             dead_letters=[SimpleNamespace(reason="schema: prediction_id is required"),
                                           SimpleNamespace(reason="schema: extra field 'x'")])
    metrics.count_batch(result, {"prediction": 4, "outcome": 3}, 2_100, 0.05)
    assert value("pitstop_events_total", kind="prediction") - before["p"] == 4
    assert value("pitstop_ingest_batch_messages_count") - before["batches"] == 1
    assert value("pitstop_ingest_batch_messages_sum") - before["messages"] == 7
    assert value("pitstop_ingest_batch_bytes_sum") - before["bytes"] == 2_100
    assert value("pitstop_dead_letters_total", reason="schema") - before["schema"] == 2
    assert value("pitstop_labels_joined_total", change="set") - before["set"] == 2
    assert metrics.reason_category("Too Big For The Topic: 9 MB") == "too_big_for_the_topic"
    assert metrics.reason_category("") == "unknown"
