"""The consumer: handlers, the message pipeline, outcomes, offsets, dead letters, the engine and its transports."""

from toolkit.consumer.deadletter import original_record
from toolkit.consumer.handlers import BaseHandler, DeadLetter, HandlerRegistry, Retry
from toolkit.consumer.kafka_io import replay_dead_letter
from toolkit.consumer.middleware import Middleware
from toolkit.consumer.options import ConsumerOptions
from toolkit.consumer.outcomes import ErrorPolicy, RetryPolicy
from toolkit.consumer.pipeline import Message
from toolkit.consumer.runtime import ConsumerStopped, KafkaConsumer, install_signal_handlers, run
from toolkit.consumer.stats import ConsumerStats, TopicStats
from toolkit.settings import OrderingMode

__all__ = [
    "BaseHandler",
    "ConsumerOptions",
    "ConsumerStats",
    "ConsumerStopped",
    "DeadLetter",
    "ErrorPolicy",
    "HandlerRegistry",
    "KafkaConsumer",
    "Message",
    "Middleware",
    "OrderingMode",
    "Retry",
    "RetryPolicy",
    "TopicStats",
    "install_signal_handlers",
    "original_record",
    "replay_dead_letter",
    "run",
]
