"""Everything leadflow says to Kafka goes through here: client options (security included),
topic creation and readiness, and the one producer (acks=all, idempotent)."""

from streams.kafka.options import client_options
from streams.kafka.ping import KafkaPing
from streams.kafka.producer import KafkaUnavailable, OutRecord, Producer, new_producer
from streams.kafka.topics import TopicOutcome, create_topics, topic_partitions, wait_for_kafka

__all__ = [
    "KafkaPing",
    "KafkaUnavailable",
    "OutRecord",
    "Producer",
    "TopicOutcome",
    "client_options",
    "create_topics",
    "new_producer",
    "topic_partitions",
    "wait_for_kafka",
]
