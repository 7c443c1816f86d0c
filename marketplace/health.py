from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from kombu import Connection

from marketplace.events.publisher import outbox_lag_seconds


def healthz(request):
    """Liveness and the numbers an operator watches: database, broker and outbox lag."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
        checks["outbox_lag_seconds"] = round(outbox_lag_seconds(), 3)
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        with Connection(settings.BROKER_URL, connect_timeout=settings.EVENTS_PUBLISH_TIMEOUT) as broker:
            broker.ensure_connection(max_retries=0)  # one attempt; connect() sleeps 2s and retries
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    # Orders are still taken while the broker is down (the outbox holds their events), so only a
    # database failure makes this instance unhealthy; a broker failure is reported as degraded.
    if checks["database"] != "ok":
        return JsonResponse({"status": "unhealthy", **checks}, status=503)
    return JsonResponse({"status": "ok" if checks["broker"] == "ok" else "degraded", **checks})
