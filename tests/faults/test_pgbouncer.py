"""The whole system behind pgbouncer in transaction pooling mode, as docs/architecture.md promises.

The slow test is one fault-ledger row (``bin/faults --only pgbouncer``): Debian's pgbouncer on a
port of its own, in front of the harness's own PostgreSQL cluster (never the shared one on 5432),
with fewer server connections than clients. Every Procfile process (gunicorn, relay, dead-letter
recorder, one worker per subscriber, beat, the maintenance worker) reaches PostgreSQL only through
it; orders come in through the HTTP API while PostgreSQL restarts behind pgbouncer; unreadable
messages are dead-lettered and recorded before and after the restart; ``manage.py prune_events``
runs through it. The row passes when nothing is lost, duplicated or oversold (every order's
confirmation email, seller email or webhook, and segmentation count; every loyalty reward code
emailed once), every dead letter is recorded, no process connected to PostgreSQL directly, and
retention deleted everything past its horizon. About 90 s on a busy two-core machine:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mp_bouncer .venv/bin/pytest tests/faults/test_pgbouncer.py -m slow

The quick test (seconds, in the normal run) puts pgbouncer in front of the test database and shows
why DATABASE_DISABLE_SERVER_SIDE_CURSORS must be true behind it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.db import connection

from tests.faults.harness import kinds
from tests.faults.harness.ledger import Harness
from tests.faults.harness.servers import PgBouncer, free_port
from tests.faults.harness.system import ROOT

pytestmark = pytest.mark.skipif(shutil.which("pgbouncer") is None, reason="needs pgbouncer (apt-get install pgbouncer)")

# Iterates a queryset with QuerySet.iterator() through pgbouncer while a second client holds a
# transaction open, so that the iterator's next statement gets another server connection.
_ITERATE = """
import os
import django, psycopg
django.setup()
from django.contrib.auth.models import Permission
rows = Permission.objects.order_by("id").iterator(chunk_size=2)
next(rows)
other = psycopg.connect(os.environ["BOUNCER_URL"])
other.execute("SELECT 1")
print(1 + len(list(rows)))
"""


@pytest.fixture
def bouncer(db):
    """pgbouncer (transaction pooling, two server connections) in front of the test database."""
    workdir = Path(tempfile.mkdtemp(prefix="mp-pgbouncer-"))
    workdir.chmod(0o755)
    settings = connection.settings_dict
    bouncer = PgBouncer(
        workdir, free_port(), int(settings["PORT"] or 5432), control_dir=workdir, pool_size=2, dbname=settings["NAME"]
    )
    bouncer.start()
    yield bouncer
    bouncer.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def _iterate(bouncer: PgBouncer, disable_server_side_cursors: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "marketplace.settings",
        "DATABASE_URL": bouncer.url,
        "BOUNCER_URL": bouncer.url.replace("postgres://", "postgresql://"),
        "DATABASE_DISABLE_SERVER_SIDE_CURSORS": disable_server_side_cursors,
    }
    return subprocess.run(
        [sys.executable, "-c", _ITERATE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_queryset_iterator_needs_server_side_cursors_off_behind_pgbouncer(bouncer):
    broken = _iterate(bouncer, "false")
    fixed = _iterate(bouncer, "true")

    assert broken.returncode != 0, broken.stdout
    assert "does not exist" in broken.stderr, broken.stderr[-2000:]
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert int(fixed.stdout.split()[-1]) > 2


@pytest.mark.slow
@pytest.mark.workers
@pytest.mark.timeout(900)
def test_the_whole_system_runs_behind_pgbouncer_in_transaction_mode_through_a_database_restart():
    with Harness(quick=True, log=lambda message: None) as harness:
        row = kinds.run_kind(harness, "pgbouncer")

    assert row.accepted > 0, row.as_dict()
    assert row.lost == 0, row.as_dict()
    assert row.duplicated == 0, row.as_dict()
    assert row.verdict == "pass", row.as_dict()
