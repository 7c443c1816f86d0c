"""Loaded by test workers only (CELERY_IMPORTS): logs every task start to FAULTS_DIR/tasks.log."""

import time

from celery.signals import task_prerun

from tests.support.faults import append_json


@task_prerun.connect
def _log_task_start(sender=None, task_id=None, task=None, args=None, **kwargs):
    envelope = args[0] if args else {}
    append_json(
        "tasks.log",
        {
            "task": task.name,
            "task_id": task_id,
            "retries": task.request.retries,
            "event_id": envelope.get("id") if isinstance(envelope, dict) else None,
            "delivery_info": {k: task.request.delivery_info.get(k) for k in ("exchange", "routing_key")},
            "at": time.time(),
        },
    )
