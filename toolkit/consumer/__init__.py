"""The consumer: handlers, the message pipeline, outcomes, offsets, dead letters and the Kafka runtime."""

from toolkit.consumer.handlers import BaseHandler, HandlerRegistry
from toolkit.consumer.outcomes import ErrorPolicy, RetryPolicy
from toolkit.consumer.pipeline import Message

__all__ = ["BaseHandler", "ErrorPolicy", "HandlerRegistry", "Message", "RetryPolicy"]
