"""Settings of the test process (pyproject.toml's DJANGO_SETTINGS_MODULE): development, asked for.

Production is the default (marketplace/settings.py); the tests run development settings, and every
process they start inherits the choice through the environment. tests/security/ starts processes
with production settings on purpose.
"""

import atexit
import os
import shutil
import tempfile

os.environ["MARKETPLACE_ENV"] = "development"
# Rate limits no test reaches by accident (each check still runs); tests/ratelimits/ sets small ones
# for itself. Through the environment, so that the processes tests start count the same way.
os.environ["API_RATE_LIMIT_ORDERS"] = "100000/minute"
os.environ["API_RATE_LIMIT_UNAUTHENTICATED"] = "100000/minute"
# No tracing, whatever the shell exports (OTEL_EXPORTER_OTLP_ENDPOINT, say), in this process and
# those tests start; tests/observability/test_tracing.py turns it on for the processes it starts.
os.environ["OTEL_SDK_DISABLED"] = "true"
# Metrics files of this pytest process and the workers it starts, in a directory of their own. The
# default (one per database name) is read before pytest-django renames the database, so parallel
# pytest processes (xdist, or a second run) would otherwise add up each other's counts. xdist's
# processes inherit the controller's environment: each makes its own directory, which the processes
# it starts inherit in turn.
if os.environ.get("MARKETPLACE_TEST_METRICS_OWNER") != os.environ.get("PYTEST_XDIST_WORKER", "controller"):
    os.environ["MARKETPLACE_TEST_METRICS_OWNER"] = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="marketplace-metrics-test-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)

from marketplace.settings import *  # noqa: F403
