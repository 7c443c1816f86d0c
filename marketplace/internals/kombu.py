"""kombu internals the worker's consumer relies on (marketplace/events/consumer.py)."""

from __future__ import annotations

from typing import Any


def queue_of_consumer_tag(consumer: Any, tag: str) -> str | None:
    """The queue a delivery came from, by its consumer tag.

    A message from the fanout carries its exchange and an empty routing key, not its queue, and a
    worker consumes several queues on one channel. kombu keeps each queue's consumer tag in the
    private ``Consumer._active_tags`` ({queue name: tag}); there is no public accessor.
    """
    for queue_name, queue_tag in active_tags(consumer).items():
        if queue_tag == tag:
            return queue_name
    return None


def active_tags(consumer: Any) -> dict[str, str]:
    """{queue name: consumer tag} of what ``consumer`` consumes (empty before it consumes)."""
    return dict(getattr(consumer, "_active_tags", None) or {}) if consumer is not None else {}


def forget_decoded_payload(message: Any) -> None:
    """A message whose body was rewritten in place must be decoded again: kombu caches the decoded
    payload in the private ``Message._decoded_cache`` on first ``decode()``, with no reset."""
    message._decoded_cache = None
