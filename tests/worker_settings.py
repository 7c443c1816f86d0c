"""Settings for the Celery worker processes that tests start (see tests/conftest.py)."""

import os

# Development, like the test process whose environment the workers inherit (tests/settings.py).
os.environ.setdefault("MARKETPLACE_ENV", "development")

from marketplace.settings import *  # noqa: F403

EMAIL_BACKEND = "tests.support.faults.ControlledEmailBackend"
CELERY_IMPORTS = ["tests.support.probe"]
