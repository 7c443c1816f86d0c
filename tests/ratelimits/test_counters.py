"""The store behind the limits: windows on the database's clock, an UNLOGGED table, the nightly
prune of ended windows, and the rates the settings accept."""

from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.utils import timezone

from marketplace.celery import MAINTENANCE_QUEUE
from marketplace.celery import app as celery_app
from marketplace.ratelimits import counters
from marketplace.ratelimits.models import RateLimitCounter
from marketplace.ratelimits.rates import Rate, parse_rate, rate_setting

pytestmark = pytest.mark.django_db

HOUR = 3600


def test_a_window_counts_to_its_limit_and_tells_how_long_it_has_left():
    rate = Rate(requests=2, seconds=HOUR)

    verdicts = [counters.count(scope="test", client="a", rate=rate) for _ in range(3)]

    assert [verdict.allowed for verdict in verdicts] == [True, True, False]
    assert all(1 <= verdict.retry_after <= HOUR for verdict in verdicts)
    row = RateLimitCounter.objects.get(scope="test", client="a")
    assert row.hits == 3
    assert row.window_ends_at.timestamp() % HOUR == 0  # windows are aligned on the clock
    assert timezone.now() < row.window_ends_at <= timezone.now() + timedelta(seconds=HOUR)


def test_scopes_and_clients_are_counted_apart():
    rate = Rate(requests=1, seconds=HOUR)

    assert counters.count(scope="test", client="a", rate=rate).allowed
    assert counters.count(scope="test", client="b", rate=rate).allowed
    assert counters.count(scope="other", client="a", rate=rate).allowed
    assert not counters.count(scope="test", client="a", rate=rate).allowed


def test_a_later_window_starts_the_count_again():
    rate = Rate(requests=1, seconds=HOUR)
    RateLimitCounter.objects.create(
        scope="test", client="a", hits=50, window_ends_at=timezone.now() - timedelta(seconds=1)
    )

    assert counters.count(scope="test", client="a", rate=rate).allowed
    assert RateLimitCounter.objects.get(scope="test", client="a").hits == 1


def test_reading_whether_a_client_was_refused_counts_nothing():
    rate = Rate(requests=1, seconds=HOUR)
    assert counters.refused_in_window(scope="test", client="a", rate=rate).allowed
    counters.count(scope="test", client="a", rate=rate)
    assert counters.refused_in_window(scope="test", client="a", rate=rate).allowed  # at the limit, not past it

    counters.count(scope="test", client="a", rate=rate)

    verdict = counters.refused_in_window(scope="test", client="a", rate=rate)
    assert not verdict.allowed
    assert 1 <= verdict.retry_after <= HOUR
    assert RateLimitCounter.objects.get(scope="test", client="a").hits == 2


def test_the_table_is_unlogged():
    with connection.cursor() as cursor:
        cursor.execute("SELECT relpersistence FROM pg_class WHERE relname = %s", [RateLimitCounter._meta.db_table])
        assert cursor.fetchone() == ("u",)


def test_the_prune_deletes_ended_windows_only_in_batches():
    now = timezone.now()
    for i in range(5):
        RateLimitCounter.objects.create(
            scope="test", client=f"gone{i}", hits=1, window_ends_at=now - timedelta(hours=i)
        )
    RateLimitCounter.objects.create(scope="test", client="active", hits=1, window_ends_at=now + timedelta(minutes=1))

    assert counters.prune_ended_windows(batch_size=2) == 5

    assert list(RateLimitCounter.objects.values_list("client", flat=True)) == ["active"]


def test_beat_prunes_the_counters_nightly_on_the_maintenance_worker(settings):
    from celery.schedules import crontab

    from marketplace.ratelimits.tasks import prune_counters

    entry = celery_app.conf.beat_schedule["prune-rate-limit-counters"]
    assert entry["task"] == prune_counters.name
    assert entry["schedule"] == crontab.from_string(settings.RETENTION_SCHEDULE)
    route = celery_app.amqp.router.route(dict(entry.get("options", {})), entry["task"])
    assert route["queue"].name == MAINTENANCE_QUEUE.name

    RateLimitCounter.objects.create(scope="test", client="gone", hits=1, window_ends_at=timezone.now())
    prune_counters.run()
    assert not RateLimitCounter.objects.exists()


@pytest.mark.parametrize(
    ("text", "rate"),
    [("30/minute", Rate(30, 60)), ("1/s", Rate(1, 1)), (" 5/HOUR ", Rate(5, HOUR)), ("100/day", Rate(100, 86400))],
)
def test_rates_read_as_drf_writes_them(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["30", "30/month", "0/minute", "-1/minute", "1.5/minute", "thirty/minute", "/m"])
def test_a_malformed_rate_is_refused_naming_its_variable(text):
    with pytest.raises(ImproperlyConfigured, match=r"^API_RATE_LIMIT_ORDERS: "):
        rate_setting("API_RATE_LIMIT_ORDERS", text)


def test_an_empty_rate_is_no_limit():
    assert rate_setting("API_RATE_LIMIT_ORDERS", "") is None
    assert rate_setting("API_RATE_LIMIT_ORDERS", "20/minute") == "20/minute"
