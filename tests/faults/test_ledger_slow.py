"""Every row of the fault ledger as a test (slow: minutes). ``bin/faults`` runs the same rows and
writes docs/reliability.md; run these with

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mp_faults .venv/bin/pytest tests/faults/test_ledger_slow.py -m slow
"""

from __future__ import annotations

import pytest

from tests.faults.harness import kinds
from tests.faults.harness.ledger import Harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def harness():
    with Harness(quick=True, log=lambda message: None) as h:
        yield h


@pytest.mark.parametrize("kind", list(kinds.KINDS))
def test_the_fault_ledger_row_passes(harness, kind):
    row = kinds.run_kind(harness, kind)

    assert row.verdict == "pass", row.as_dict()
