"""Celery internals the worker runtime relies on (marketplace/events/consumer.py, subscriber.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kombu.utils.json import dumps


def without_step(steps: Iterable[str], name: str) -> list[str]:
    """A Blueprint's ``default_steps`` without the step class ``name`` (e.g. "DelayedDelivery").

    Celery includes its native delayed delivery step whenever it detects quorum queues, and
    offers no setting to leave it out (``worker_detect_quorum_queues=False`` would also turn
    global QoS back on, which quorum queues refuse). Steps are listed as "module:Class" strings.
    """
    return [step for step in steps if not step.endswith(f":{name}")]


def task_message_body(
    app: Any, task_id: str, task_name: str, *, args_json: bytes, **options: Any
) -> tuple[dict[str, Any], bytes]:
    """(headers, body) of a protocol-2 task message whose one argument is ``args_json``, already
    JSON: the body is ``[args, kwargs, embed]`` (Celery's documented message protocol), built with
    ``app.amqp.as_task_v2`` and the event's own bytes spliced in rather than decoded and encoded
    again. ``as_task_v2`` is documented API reference, but its body tuple layout is the protocol's."""
    task = app.amqp.as_task_v2(task_id, task_name, args=[None], **options)
    _, kwargs, embed = task.body
    body = b"[[" + args_json + b"]," + dumps(kwargs).encode() + b"," + dumps(embed).encode() + b"]"
    return task.headers, body


def request_header(request: Any, name: str) -> Any:
    """A custom header of the task message being run, or None.

    Protocol 2 sends custom headers beside Celery's own, and the worker's Request makes each an
    attribute of ``task.request`` (Context); ``request.headers`` is not filled for them.
    """
    return getattr(request, name, None)


def republish_signature(task: Any, request: Any, **options: Any) -> Any:
    """The signature that sends the running task's message again (same id, args and headers),
    as ``Task.retry`` builds it: ``Task.signature_from_request`` is not in Celery's user guide."""
    return task.signature_from_request(request, **options)
