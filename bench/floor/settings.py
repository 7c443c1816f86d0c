"""The marketplace's settings, plus the floor's views (bench/floor/urls.py) on the same database."""

from marketplace.settings import *  # noqa: F403

ROOT_URLCONF = "bench.floor.urls"
