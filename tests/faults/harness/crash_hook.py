"""Test-only: crash the worker process (os._exit) before a task for a listed event id runs.

The harness lists event ids, one per line, in $FAULT_LEDGER_CONTROL_DIR/crash_events. Such an event
kills the process that runs its task every time it is delivered: a handler that crash-loops its
worker, the kind of poison message only a delivery limit stops.
"""

import os
from pathlib import Path

from celery.signals import task_prerun


def _crash_list() -> Path | None:
    directory = os.environ.get("FAULT_LEDGER_CONTROL_DIR")
    return Path(directory) / "crash_events" if directory else None


@task_prerun.connect
def crash_on_listed_events(sender=None, task_id=None, task=None, args=None, **kwargs):
    path = _crash_list()
    if path is None or not path.exists():
        return
    envelope = args[0] if args else None
    event_id = envelope.get("id") if isinstance(envelope, dict) else None
    if event_id and event_id in path.read_text().split():
        os._exit(70)
