import time

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from kombu import Connection

from marketplace.events.broker import connect_once
from marketplace.events.outbox import outbox_lag_seconds
from marketplace.events.topology_check import Problem, topology_problems

# The topology check costs a few passive declares and management API calls: each process runs it
# at most once per TOPOLOGY_CACHE_SECONDS, whatever the request rate.
TOPOLOGY_CACHE_SECONDS = 10.0
_topology_cache: dict[str, tuple[float, list[Problem]]] = {}


def healthz(request):
    """Liveness and the numbers an operator watches: database, broker, topology and outbox lag."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
        checks["outbox_lag_seconds"] = round(outbox_lag_seconds(), 3)
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    topology_faulty = True
    try:
        with Connection(settings.BROKER_URL, connect_timeout=settings.EVENTS_PUBLISH_TIMEOUT) as broker:
            connect_once(broker)  # one attempt per host of BROKER_URL; connect() sleeps 2s and retries
            checks["broker"] = "ok"
            try:
                problems = _cached_topology_problems(broker)
                checks["topology"] = [str(p) for p in problems] or "ok"
                topology_faulty = any(not p.unchecked for p in problems)
            except Exception as exc:
                checks["topology"] = [f"not checked: {type(exc).__name__}: {exc}"]
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
        checks["topology"] = ["not checked: the broker is unreachable"]
    # Orders are still taken while the broker is down (the outbox holds their events), so only a
    # database failure makes this instance unhealthy. A broker failure, or a missing queue or
    # binding (a subscriber misses events), is reported as degraded; a management API that cannot
    # be reached ("bindings not checked") is shown but degrades nothing.
    if checks["database"] != "ok":
        return JsonResponse({"status": "unhealthy", **checks}, status=503)
    faulty = checks["broker"] != "ok" or topology_faulty
    return JsonResponse({"status": "degraded" if faulty else "ok", **checks})


def _cached_topology_problems(broker: Connection) -> list[Problem]:
    now = time.monotonic()
    cached = _topology_cache.get(settings.BROKER_URL)
    if cached is not None and now - cached[0] < TOPOLOGY_CACHE_SECONDS:
        return cached[1]
    problems = topology_problems(
        broker,
        settings.RABBITMQ_MANAGEMENT_URL,
        retry_delays=settings.SUBSCRIBER_RETRY_DELAYS,
        timeout=settings.EVENTS_PUBLISH_TIMEOUT,
    )
    _topology_cache[settings.BROKER_URL] = (now, problems)
    return problems
