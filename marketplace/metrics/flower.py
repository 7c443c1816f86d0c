"""Flower, with its /metrics behind the same authentication as its UI.

Flower 2.x exempts /metrics (and /healthcheck) from authentication on purpose (mher/flower#1129,
documented in its auth.rst), so ``--basic-auth`` leaves the task names, worker names and rates it
exports open to anyone who can reach the port, and Flower has no option to change that. This
runs ``celery -A marketplace flower`` with that one route replaced by a subclass that requires
the UI's authentication (and, like Flower's API, refuses to serve at all when none is
configured, unless FLOWER_UNAUTHENTICATED_API is set). /healthcheck stays open, for probes.

    python -m marketplace.metrics.flower --port=5555     # same arguments as `celery flower`

The Procfile and docker-compose.yml start Flower this way.

It also makes two of Flower's views tell the truth about this deployment:

- The Broker tab lists only the queues the workers consume, and the RabbitMQ management API
  answers for every vhost when asked for "/" (each queue twice, another deployment's too). It
  lists here every queue of the topology (subscriber, retry and dead-letter queues, the recorder's
  inbox and the parked queue), and only those of BROKER_URL's vhost.
- At start Flower inspects the workers once (stats, active_queues, registered, conf): those that
  start alongside it are not listening yet, and each method logs "Inspect method ... failed".
  Nobody answering is not a failure: that is logged once, at INFO; the Workers page inspects
  again when opened. A worker that answers with an error is still a warning.

And every page it serves carries the web's Content Security Policy (settings.CONTENT_SECURITY_POLICY,
built by django-csp), with what Flower's own pages need added: its one inline script and its
style="" attributes, each allowed by hash, and the data: images of its Bootstrap CSS.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import sys
from pathlib import Path
from urllib.parse import unquote

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


def show_deployment_queues() -> None:
    """The Broker tab: every queue of our topology, in BROKER_URL's vhost only."""
    from flower.utils import broker
    from flower.views import BaseHandler

    from marketplace.events import topology

    active_queue_names = BaseHandler.get_active_queue_names

    def get_active_queue_names(self) -> list[str]:
        from django.conf import settings

        ours = {queue.name for queue in topology.all_queues(settings.SUBSCRIBER_RETRY_DELAYS)}
        return sorted(set(active_queue_names(self)) | ours)

    BaseHandler.get_active_queue_names = get_active_queue_names

    rabbitmq_queues = broker.RabbitMQ.queues

    async def queues(self, names):
        vhost = unquote(self.vhost)
        return [queue for queue in await rabbitmq_queues(self, names) if queue.get("vhost", vhost) == vhost]

    broker.RabbitMQ.queues = queues


def send_content_security_policy() -> None:
    """Every Flower response carries our Content Security Policy, adapted to Flower's pages."""
    from csp.constants import SELF, UNSAFE_HASHES
    from csp.utils import build_policy, default_config
    from django.conf import settings
    from flower.views import BaseHandler

    policy = build_policy(
        config=default_config(settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]),
        update={
            "script-src": flower_inline_script_hashes(),
            "style-src-attr": [UNSAFE_HASHES, *flower_style_attribute_hashes()],
            "img-src": [SELF, "data:"],
        },
    )
    set_default_headers = BaseHandler.set_default_headers

    def set_default_headers_and_policy(self) -> None:
        set_default_headers(self)
        self.set_header("Content-Security-Policy", policy)

    BaseHandler.set_default_headers = set_default_headers_and_policy


# The one inline script of Flower's templates (workers.html: "var autorefresh = {{ autorefresh }};",
# 1 or 0 as views/workers.py renders it).
FLOWER_INLINE_SCRIPT = ("workers.html", "autorefresh", (0, 1))


def flower_inline_script_hashes() -> list[str]:
    """Hashes of that script as Flower renders it, read from the installed Flower's own template
    (with the same whitespace handling). Should an upgrade change it, the script is refused and
    tests/browser/test_flower_console.py fails on the violation."""
    from tornado import template

    name, variable, values = FLOWER_INLINE_SCRIPT
    return [
        _hash_source(template.Template(body, name=name).generate(**{variable: value}))
        for body in re.findall(
            r"<script[^>]*>(.*?)</script>", (_flower_templates() / name).read_text(), flags=re.DOTALL
        )
        if body.strip()
        for value in values
    ]


def flower_style_attribute_hashes() -> list[str]:
    """Hashes of the fixed style="" attributes in Flower's templates (a column's width)."""
    templates = _flower_templates().glob("*.html")
    values = {value for path in templates for value in re.findall(r'style="([^"{}]*)"', path.read_text())}
    return [_hash_source(value.encode()) for value in sorted(values)]


def _flower_templates() -> Path:
    from flower import urls

    return Path(urls.settings["template_path"])


def _hash_source(text: bytes) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(text).digest()).decode()}'"


class NoWorkerAnswered(logging.Filter):
    """Flower's 'Inspect method %s failed' without a reason means no worker answered at all (none
    is up yet, or none is up): said once, at INFO, rather than a warning per method."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "Inspect method %s failed" or len(record.args or ()) != 1:
            return True
        if self.said:
            return False
        NoWorkerAnswered.said = True
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = (
            "no worker answered Flower's inspection yet (%s); the Workers page asks again",
            (record.args[0],),
        )
        return True


def main(argv: list[str]) -> int:
    # Flower keeps its own metrics in its memory. With PROMETHEUS_MULTIPROC_DIR set (from .env, say)
    # prometheus_client would write them to the shared directory, where the web's /metrics would
    # add them to ours.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    values.ValueClass = values.MutexValue
    protect_metrics()
    show_deployment_queues()
    send_content_security_policy()
    logging.getLogger("flower.inspector").addFilter(NoWorkerAnswered())
    from celery.bin.celery import main as celery

    sys.argv = ["celery", "-A", "marketplace", "flower", *argv]
    return celery()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
