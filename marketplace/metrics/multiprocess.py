"""prometheus_client's multiprocess mode, for gunicorn workers and Celery pool processes.

Each process writes its counters and histograms to memory-mapped files of its own in one
directory (PROMETHEUS_MULTIPROC_DIR); /metrics adds up every file there (MultiProcessCollector).
A per-process registry would show only the process that happens to answer the scrape, and a
Celery pool process has no HTTP server at all.

Files are named after the host *and* the pid (``counter_<host>-<pid>.db``), not the pid alone:
in docker-compose.yml the containers share the directory through a volume but each has its own
pid namespace, and two processes writing the same file would corrupt each other's counts.

Files of processes that exited stay: their counts stay in the totals, so every counter keeps
growing (a total that shrank would read as a counter reset to Prometheus and show as a spike in
rate()). What is removed, and when:

- at the start of a process (the first metric it records, or a Celery worker's start) that finds
  only files of dead processes of this host: the whole deployment was stopped, the files are
  wiped, and the counters start again from 0 as after any restart;
- the "live" gauge files of a dead process (prometheus_client's mark_process_dead), whose values
  must not outlive it: when a Celery pool process exits (the worker_process_shutdown signal, the
  only hook Celery has into its pool's lifecycle), and for any dead process of this host found at
  a process start. (The metrics of this project have no live gauges today; this keeps any that
  are added correct.)

Nothing here runs per event.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from celery.signals import worker_init, worker_process_shutdown
from django.conf import settings
from prometheus_client import multiprocess, values
from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client splits file names on "_": keep it out of the host part.
HOST = socket.gethostname().replace("_", "-") or "localhost"


def process_id(pid: int | None = None) -> str:
    """What this process's files are named after: ``<host>-<pid>``."""
    return f"{HOST}-{os.getpid() if pid is None else pid}"


def enable(directory: str) -> None:
    """Make every metric created from now on in this process write to ``directory``.

    An empty ``directory`` keeps metrics in this process's memory instead.
    """
    if not directory:
        os.environ.pop(ENV, None)
        values.ValueClass = values.MutexValue
        return
    # prometheus_client reads the directory from the environment when it opens a file; child
    # processes (Celery's pool, gunicorn's workers, test workers) inherit it.
    os.environ[ENV] = directory
    prepare_directory(directory)
    values.ValueClass = values.MultiProcessValue(process_identifier=process_id)


def prepare_directory(directory: str) -> None:
    """Create ``directory``; wipe it if only dead processes of this host wrote there (see above)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    files = list(path.glob("*.db"))
    writers = {file: _writer(file) for file in files}
    dead = {file: writer for file, writer in writers.items() if writer and writer[0] == HOST and not _alive(writer[1])}
    if files and len(dead) == len(files):
        for file in files:
            file.unlink(missing_ok=True)
        logger.info("metrics: wiped %d file(s) of stopped processes from %s", len(files), directory)
        return
    for _, pid in set(dead.values()):
        mark_process_dead(pid, directory)


class FilesCollector:
    """Every process's files in ``directory``, added up (prometheus_client's MultiProcessCollector),
    leaving out a file its process is still creating.

    prometheus_client creates a process's file empty and sizes it a moment later; a scrape in that
    moment fails as a whole, every other process's metrics with it (struct.error, an open issue:
    prometheus/client_python#1199), and a process killed in that moment leaves the empty file for
    good. An empty file holds nothing recorded yet, so it is left out. Files only grow while their
    process lives, so one seen with its header is still whole when it is read.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def collect(self) -> Iterable[Metric]:
        return multiprocess.MultiProcessCollector.merge(self._written_files(), accumulate=True)

    def _written_files(self) -> list[str]:
        files = []
        for file in sorted(self.directory.glob("*.db")):
            try:
                if file.stat().st_size >= _HEADER_BYTES:
                    files.append(str(file))
            except FileNotFoundError:  # a live gauge's file, removed as its process was marked dead
                continue
        return files


# A file's first 8 bytes say how much of it is used (prometheus_client's mmap_dict).
_HEADER_BYTES = 8


def mark_process_dead(pid: int, directory: str) -> None:
    multiprocess.mark_process_dead(process_id(pid), directory)


def _writer(file: Path) -> tuple[str, int] | None:
    """(host, pid) of the process that wrote ``file``; None if it is not named the way we name files."""
    host, _, pid = file.stem.rsplit("_", 1)[-1].rpartition("-")
    return (host, int(pid)) if host and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@worker_init.connect
def prepare_at_worker_start(sender=None, **kwargs) -> None:
    """A Celery worker prepares the directory before it forks its pool."""
    if settings.PROMETHEUS_MULTIPROC_DIR:
        prepare_directory(settings.PROMETHEUS_MULTIPROC_DIR)


@worker_process_shutdown.connect
def mark_pool_process_dead(pid=None, **kwargs) -> None:
    """Sent in a pool process as it exits (not when it is killed: the next start catches that)."""
    directory = os.environ.get(ENV)
    if directory and pid:
        mark_process_dead(pid, directory)
