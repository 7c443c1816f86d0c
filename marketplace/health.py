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
    healthy = checks["database"] == "ok" and checks["broker"] == "ok"
    return JsonResponse({"status": "ok" if healthy else "degraded", **checks}, status=200 if healthy else 503)
