"""The id the broker gave each topic (Kafka's topic id, KIP-516), which keys a dead letter's row by the topic's life;
asked with kafka-python's admin client, so that the Faust workers and the retrain worker (kafka-python) share it."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class TopicIds:
    """The id the broker gave each topic (Kafka's topic id, KIP-516), which keys a dead letter's row by the topic's
    life: the local broker keeps nothing across a restart, makes every topic again with a new id and starts its
    offsets at 0, while its cluster id is the same at every start. aiokafka's metadata requests predate topic ids, so
    kafka-python's admin client asks; only for a dead letter, once per topic until :meth:`forget`.

    A failed lookup is logged and gives "" (a life unknown: the row is keyed as before topic ids), so that it never
    stops the stream; the next dead letter asks again.
    """

    def __init__(self, bootstrap: str, *, client_id: str = "pitstop-topic-ids") -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self._ids: dict[str, str] = {}

    def __call__(self, topic: str) -> str:
        known = self._ids.get(topic)
        if known is not None:
            return known
        try:
            topic_id = self._lookup(topic)
        except Exception as exc:
            log.warning("topic id of %s not found (%s); its dead letters are keyed without it", topic, exc)
            return ""
        self._ids[topic] = topic_id
        return topic_id

    def forget(self) -> None:
        """Look the ids up again when next needed (after a rebalance: the broker may have made the topics again)."""
        self._ids.clear()

    def _lookup(self, topic: str) -> str:
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.client_id, request_timeout_ms=10_000)
        try:
            (described,) = admin.describe_topics([topic])
        finally:
            admin.close()
        topic_id = str(described.get("topic_id") or "")
        # a broker without topic ids answers with the zero id
        return "" if topic_id.strip("0-A=") == "" else topic_id
