"""Settings of the test process (pyproject.toml's DJANGO_SETTINGS_MODULE): development, asked for.

Production is the default (marketplace/settings.py); the tests run development settings, and every
process they start inherits the choice through the environment. tests/security/ starts processes
with production settings on purpose.
"""

import os

os.environ["MARKETPLACE_ENV"] = "development"

from marketplace.settings import *  # noqa: F403
