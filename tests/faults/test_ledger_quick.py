"""The cheap rows of the fault ledger, in the normal test run (about a minute in all).

One harness for the module: a PostgreSQL cluster and a RabbitMQ node of its own, the Procfile's
processes, an SMTP sink and a seller webhook (see tests/faults/harness/). Each test causes one
fault for real and reads the ledger row: nothing lost, nothing duplicated outside the documented
send-then-commit window, nothing oversold. ``bin/faults`` runs every row.
"""

from __future__ import annotations

import pytest

from tests.faults.harness import kinds
from tests.faults.harness.ledger import Harness

# One xdist process runs them all (bin/test: --dist loadgroup), so the harness boots once.
pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("ledger_quick"), pytest.mark.long]


@pytest.fixture(scope="module")
def harness():
    with Harness(quick=True, log=lambda message: None) as h:
        yield h


def _assert_clean(row) -> None:
    summary = f"{row.as_dict()}"
    assert row.accepted > 0, summary
    assert row.lost == 0, summary
    assert row.duplicated == 0, summary
    assert row.oversold == 0, summary


def test_a_worker_killed_mid_task_loses_and_duplicates_nothing(harness):
    row = kinds.worker_killed(harness, "order_confirmation")
    harness.quiesce()

    _assert_clean(row)
    assert row.dead_lettered == 0, row.as_dict()
    assert row.recovery_seconds is not None


def test_an_event_published_three_times_has_one_effect_per_subscriber(harness):
    row = kinds.duplicate_republish(harness)
    harness.quiesce()

    _assert_clean(row)
    assert row.duplicated_window == 0, row.as_dict()
    assert row.dead_lettered == 0, row.as_dict()


def test_a_poison_message_is_recorded_and_the_events_behind_it_flow(harness):
    row = kinds.poison_messages(harness, only=("non-JSON body",))
    harness.quiesce()

    _assert_clean(row)
    assert row.verdict == "pass", row.as_dict()  # one FailedEvent per subscriber


def test_the_counter_sees_a_loss_and_a_duplicate(harness):
    row = kinds.counter_self_check(harness)
    harness.quiesce()

    assert row.accepted == 4, row.as_dict()
    assert row.lost == 4, row.as_dict()  # four buyers' profiles never counted their order
    assert row.duplicated == 1, row.as_dict()
    assert row.duplicated_window == 0, row.as_dict()
    assert row.recovery_seconds is None, row.as_dict()
