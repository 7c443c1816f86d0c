"""Settings for the Celery worker processes that tests start (see tests/conftest.py)."""

from marketplace.settings import *  # noqa: F403

EMAIL_BACKEND = "tests.support.faults.ControlledEmailBackend"
CELERY_IMPORTS = ["tests.support.probe"]
