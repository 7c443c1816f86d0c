"""/metrics: everything in Prometheus text format, behind HTTP basic auth (METRICS_BASIC_AUTH).

Without METRICS_BASIC_AUTH the route answers 404, as if it did not exist: metrics are off until
someone chooses the credentials the scraper will use (a 503 would tell a scraper to try again
later, but nothing changes until the setting does).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from marketplace import metrics
from marketplace.metrics.collectors import StateCollector
from marketplace.metrics.multiprocess import FilesCollector
from marketplace.problems import not_found_view


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    credentials = settings.METRICS_BASIC_AUTH
    if not credentials:
        return not_found_view(request)
    if not authorized(request.headers.get("Authorization", ""), credentials):
        response = HttpResponse("Authentication required.\n", status=401, content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = 'Basic realm="metrics", charset="UTF-8"'
        return response
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)


def authorized(header: str, credentials: str) -> bool:
    """Whether an Authorization header carries ``credentials`` ("user:password") as Basic auth."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, credentials.encode())


@functools.cache
def registry() -> CollectorRegistry:
    """What /metrics shows: every process's counters (their files), then the scrape-time gauges."""
    instruments = metrics.instruments()  # sets up this process's multiprocess mode first
    collected = CollectorRegistry()
    if settings.PROMETHEUS_MULTIPROC_DIR:
        collected.register(FilesCollector(settings.PROMETHEUS_MULTIPROC_DIR))
    else:
        for collector in instruments.collectors():
            collected.register(collector)
    collected.register(StateCollector())
    return collected
