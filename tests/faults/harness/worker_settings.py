"""Settings for every process the fault ledger starts: production settings plus one inert hook.

The hook (crash_hook.py) lets the poison-message fault make a handler crash its worker process
(os._exit) for event ids the harness lists; for every other event it does nothing.
"""

from marketplace import settings as _production
from marketplace.settings import *  # noqa: F403

CELERY_IMPORTS = [*getattr(_production, "CELERY_IMPORTS", []), "tests.faults.harness.crash_hook"]
