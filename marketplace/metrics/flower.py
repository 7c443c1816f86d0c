"""Flower, with its /metrics behind the same authentication as its UI.

Flower 2.x exempts /metrics (and /healthcheck) from authentication on purpose (mher/flower#1129,
documented in its auth.rst), so ``--basic-auth`` leaves the task names, worker names and rates it
exports open to anyone who can reach the port, and Flower has no option to change that. This
runs ``celery -A marketplace flower`` with that one route replaced by a subclass that requires
the UI's authentication (and, like Flower's API, refuses to serve at all when none is
configured, unless FLOWER_UNAUTHENTICATED_API is set). /healthcheck stays open, for probes.

    python -m marketplace.metrics.flower --port=5555     # same arguments as `celery flower`

The Procfile and docker-compose.yml start Flower this way.
"""

from __future__ import annotations

import os
import sys

from prometheus_client import values
from tornado import web


def protect_metrics() -> None:
    """Swap Flower's /metrics handler for one that requires authentication (before it starts)."""
    from flower import urls
    from flower.views.monitor import Metrics

    class AuthenticatedMetrics(Metrics):
        def prepare(self) -> None:
            options = self.application.options
            if not (options.basic_auth or options.auth) and not self.unauthenticated_api:
                raise web.HTTPError(401, "set FLOWER_BASIC_AUTH to serve /metrics")

        @web.authenticated
        async def get(self) -> None:
            await super().get()

    routes = [index for index, route in enumerate(urls.handlers) if _handler(route) is Metrics]
    if len(routes) != 1:
        # A Flower upgrade moved the route: fail at start rather than serve /metrics unprotected.
        raise RuntimeError(f"expected one /metrics route in flower.urls.handlers, found {len(routes)}")
    route = urls.handlers[routes[0]]
    if isinstance(route, tuple):
        urls.handlers[routes[0]] = (route[0], AuthenticatedMetrics, *route[2:])
    else:
        urls.handlers[routes[0]] = web.url(route.regex.pattern, AuthenticatedMetrics, route.kwargs, route.name)


def _handler(route) -> type | None:
    return getattr(route, "handler_class", None) or (route[1] if isinstance(route, tuple) else None)


def main(argv: list[str]) -> int:
    # Flower keeps its own metrics in its memory. With PROMETHEUS_MULTIPROC_DIR set (from .env, say)
    # prometheus_client would write them to the shared directory, where the web's /metrics would
    # add them to ours.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    values.ValueClass = values.MutexValue
    protect_metrics()
    from celery.bin.celery import main as celery

    sys.argv = ["celery", "-A", "marketplace", "flower", *argv]
    return celery()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
