"""Settings for marketplace, read from environment variables (see .env.example).

MARKETPLACE_ENV chooses the defaults: "production" (the default: no debug, HTTPS only behind a
TLS-terminating proxy, and no start without a strong DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS)
or "development" (debug, a development key, localhost; bin/run, the tests and docker-compose.yml
ask for it). Every other default works on a developer machine with PostgreSQL and RabbitMQ on
localhost.
"""

import tempfile
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import environ
from celery.schedules import crontab
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from marketplace.checks import (
    DEVELOPMENT,
    DEVELOPMENT_SECRET_KEY,
    PRODUCTION,
    check_production_settings,
)
from marketplace.events import topology
from marketplace.ratelimits.rates import rate_setting

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# One switch between safe and convenient defaults: production unless development is asked for.
MARKETPLACE_ENV = env("MARKETPLACE_ENV", default=PRODUCTION)
if MARKETPLACE_ENV not in (PRODUCTION, DEVELOPMENT):
    raise ImproperlyConfigured(f"MARKETPLACE_ENV must be {PRODUCTION!r} or {DEVELOPMENT!r}, not {MARKETPLACE_ENV!r}")
DEVELOPING = MARKETPLACE_ENV == DEVELOPMENT

DEBUG = env.bool("DJANGO_DEBUG", default=DEVELOPING)
SECRET_KEY = env("DJANGO_SECRET_KEY", default=DEVELOPMENT_SECRET_KEY if DEVELOPING else "")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEVELOPING else [])
if not DEVELOPING:
    # Refuse to start (every process: web, workers, relay, recorder, beat, manage.py) rather than
    # run production with a guessable key, debug pages, or no host check.
    check_production_settings(debug=DEBUG, secret_key=SECRET_KEY, allowed_hosts=ALLOWED_HOSTS)

# HTTPS, for production behind a TLS-terminating proxy (docs/operations.md, "Production settings").
# The proxy sets this header (overwriting any the client sent) to "https" on requests that came
# over TLS; empty: no proxy, Django sees the connection itself.
_proxy_ssl_header = env("DJANGO_SECURE_PROXY_SSL_HEADER", default="" if DEVELOPING else "X-Forwarded-Proto")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https") if _proxy_ssl_header else None
)
# Plain HTTP is redirected to HTTPS, except the probes that Prometheus and health checks send
# inside the network (paths without their leading slash, as SecurityMiddleware matches them).
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=not DEVELOPING)
SECURE_REDIRECT_EXEMPT = env.list("DJANGO_SECURE_REDIRECT_EXEMPT", default=[r"^healthz$", r"^metrics$"])
# Browsers remember to use HTTPS only (a year by default; start lower on a new domain: they keep
# it for this long, and with include-subdomains for every subdomain too).
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0 if DEVELOPING else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEVELOPING)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=not DEVELOPING)
# The admin's session and CSRF cookies travel over HTTPS only.
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=not DEVELOPING)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=not DEVELOPING)
# How many proxies in front of gunicorn append the address they were reached from to
# X-Forwarded-For: the client's address is that many entries from the right, which no client can
# forge (marketplace/client_ip.py). 0: no proxy, the connection's own address. Login lockouts and
# the API's rate limits count clients by it (DRF's own throttles too, through NUM_PROXIES).
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0 if DEVELOPING else 1)

# --- Login lockout (django-axes; docs/operations.md, "Login lockout") --------------------------
# Every login that goes through django.contrib.auth.authenticate() with a request (the admin's,
# the browsable API's) is refused for a cool-off once one username failed LOGIN_FAILURE_LIMIT times
# from one client address. Keyed on the pair, so an attacker locks an account out from their own
# address only, never from the operator's.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out pair before any password check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
# Counted from the last failure: an attempt during the lockout starts the wait again. 0: locked
# until an operator resets it (manage.py axes_reset_username).
_lockout_minutes = env.int("LOGIN_LOCKOUT_MINUTES", default=15)
AXES_COOLOFF_TIME = timedelta(minutes=_lockout_minutes) if _lockout_minutes > 0 else None
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "marketplace.lockout.lockout_address"
AXES_LOCKOUT_CALLABLE = "marketplace.lockout.locked_out"
# Masked in axes' log lines and in the request data it stores with each failed attempt (the
# password always is): a username field sometimes holds a password typed one field too early.
AXES_SENSITIVE_PARAMETERS = ["username", "ip_address", "csrfmiddlewaretoken"]
# No "AXES: BEGIN version ..." line at the start of every process (manage.py's output included).
AXES_VERBOSE = False

# --- Content Security Policy (django-csp; docs/operations.md, "Content Security Policy") -------
# Scripts and styles from our own origin only: no inline script or style unless it carries the
# response's nonce ({{ request.csp_nonce }}; the header names it only on pages that use it). The
# admin and the operator console need nothing more. The API docs pages relax styles, images and
# workers for themselves (marketplace/api_pages.py); Flower sends this policy too
# (marketplace/metrics/flower.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "csp",
    "rest_framework",
    "knox",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "marketplace.events",
    "marketplace.ratelimits",
    "orders",
    "notifications",
    "segmentation",
    "loyalty",
    "api_tokens",
]

MIDDLEWARE = [
    "marketplace.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a login refused for lockout into its page (marketplace/lockout.py).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "marketplace.urls"
WSGI_APPLICATION = "marketplace.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "marketplace" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/marketplace"),
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# A network that silently drops packets (a partition, a vanished host) must fail a connection, not
# hang its process: a bounded connect, TCP keepalives while waiting for an answer, and
# TCP_USER_TIMEOUT on unacknowledged writes (libpq parameters; options given in DATABASE_URL win).
DATABASES["default"]["OPTIONS"] = {
    "connect_timeout": env.int("DATABASE_CONNECT_TIMEOUT", default=10),
    "keepalives": 1,
    "keepalives_idle": env.int("DATABASE_KEEPALIVES_IDLE", default=30),
    "keepalives_interval": env.int("DATABASE_KEEPALIVES_INTERVAL", default=10),
    "keepalives_count": env.int("DATABASE_KEEPALIVES_COUNT", default=3),
    "tcp_user_timeout": env.int("DATABASE_TCP_USER_TIMEOUT_MS", default=60_000),
    **DATABASES["default"].get("OPTIONS", {}),
}
# Behind pgbouncer in transaction pooling mode this must be true: QuerySet.iterator() otherwise
# declares a server-side cursor that outlives its transaction, and its next FETCH can reach another
# server connection ("cursor ... does not exist"). Prepared statements need nothing: Django leaves
# psycopg's prepare_threshold at None (never prepare) unless OPTIONS sets it.
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env.bool("DATABASE_DISABLE_SERVER_SIDE_CURSORS", default=False)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# gunicorn serves the admin's and the API docs' assets itself (no internet, no separate server).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG

# --- REST API -------------------------------------------------------------------------------
# Rate limits (marketplace/ratelimits/; docs/operations.md, "Rate limits"): orders one buyer may
# place, and requests without valid credentials (none, or a wrong token) one client address may
# make, per window: "N/second", "N/minute", "N/hour" or "N/day"; empty: no limit. Past one, 429
# with Retry-After. Counted in PostgreSQL, so every web process shares them.
API_RATE_LIMIT_ORDERS = rate_setting("API_RATE_LIMIT_ORDERS", env("API_RATE_LIMIT_ORDERS", default="30/minute"))
API_RATE_LIMIT_UNAUTHENTICATED = rate_setting(
    "API_RATE_LIMIT_UNAUTHENTICATED", env("API_RATE_LIMIT_UNAUTHENTICATED", default="120/minute")
)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api_tokens.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["marketplace.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "marketplace.renderers.BrowsableAPIRenderer",  # DRF's, under the Content Security Policy
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": env.int("API_PAGE_SIZE", default=20),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "marketplace.problems.problem_exception_handler",
    "UNAUTHENTICATED_USER": None,
    # Throttles tell clients apart by the address TRUSTED_PROXY_COUNT finds (unset, DRF would take
    # X-Forwarded-For whole, as the client sent it).
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
    "DEFAULT_THROTTLE_CLASSES": ["marketplace.ratelimits.throttles.UnauthenticatedThrottle"],
    "DEFAULT_THROTTLE_RATES": {"orders": API_RATE_LIMIT_ORDERS, "unauthenticated": API_RATE_LIMIT_UNAUTHENTICATED},
}

SPECTACULAR_SETTINGS = {
    "TITLE": "marketplace API",
    "DESCRIPTION": (
        "Place orders; every accepted order publishes one `order.placed` event. "
        "Errors are RFC 9457 problem details (`application/problem+json`)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- API tokens (docs/operations.md, "API tokens") ------------------------------------------
# `Authorization: Token <token>`, checked against django-rest-knox's digests (api_tokens/): a token
# is shown once, when issued, and expires this long after (DRF tokens converted by the migration
# too, counted from the migration).
API_TOKEN_TTL = timedelta(days=env.float("API_TOKEN_TTL_DAYS", default=30))
# Live (unexpired) tokens one user may hold at once.
API_TOKEN_LIMIT_PER_USER = env.int("API_TOKEN_LIMIT_PER_USER", default=10)
KNOX_TOKEN_MODEL = "api_tokens.ApiToken"  # noqa: S105 - a model name, not a secret
REST_KNOX = {"TOKEN_TTL": API_TOKEN_TTL, "AUTH_HEADER_PREFIX": "Token"}
# knox's own migrations would create the table of its default token model, which KNOX_TOKEN_MODEL
# replaces: without them no second, empty token table exists.
MIGRATION_MODULES = {"knox": None}

# --- Orders ---------------------------------------------------------------------------------
MARKETPLACE_CURRENCY = env("MARKETPLACE_CURRENCY", default="EUR")
ORDER_MAX_LINES = env.int("ORDER_MAX_LINES", default=50)
ORDER_MAX_QUANTITY = env.int("ORDER_MAX_QUANTITY", default=100)
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=64 * 1024)

# --- Event bus ------------------------------------------------------------------------------
# Unset: a vhost named after the database (bin/run creates it: setup_broker --create-vhost), so
# that two deployments on one RabbitMQ never share queues.
BROKER_URL = env("BROKER_URL", default=f"amqp://guest:guest@127.0.0.1:5672/{quote(DATABASES['default']['NAME'])}")
# The broker's management HTTP API: the only place bindings can be read (topology checks).
RABBITMQ_MANAGEMENT_URL = env("RABBITMQ_MANAGEMENT_URL", default="http://guest:guest@127.0.0.1:15672/api/")
# The relay checks the broker topology (queues, arguments, bindings) this often, in seconds.
TOPOLOGY_CHECK_SECONDS = env.float("TOPOLOGY_CHECK_SECONDS", default=60.0)
EVENTS_SOURCE = env("EVENTS_SOURCE", default="marketplace/orders")
# Every event names its deployment, and subscribers refuse (dead-letter) events of another one.
# Unset: the database's identity (marketplace/events/envelope.py deployment()). Set it to tell
# apart two deployments that share one database's identity (a copy restored from a physical backup).
EVENTS_DEPLOYMENT = env("EVENTS_DEPLOYMENT", default="")
# The request never waits longer than this on the broker: connect + publisher confirm.
EVENTS_PUBLISH_TIMEOUT = env.float("EVENTS_PUBLISH_TIMEOUT", default=1.0)
# After a failed on-commit publish, requests skip the broker for this long (the relay delivers).
EVENTS_PUBLISH_COOLDOWN = env.float("EVENTS_PUBLISH_COOLDOWN", default=5.0)
# A claimed outbox row is left to its claimer for this long before the relay may take it over.
OUTBOX_CLAIM_SECONDS = env.float("OUTBOX_CLAIM_SECONDS", default=30.0)
OUTBOX_BATCH_SIZE = env.int("OUTBOX_BATCH_SIZE", default=100)
OUTBOX_POLL_SECONDS = env.float("OUTBOX_POLL_SECONDS", default=1.0)
OUTBOX_RETRY_MAX_SECONDS = env.float("OUTBOX_RETRY_MAX_SECONDS", default=60.0)

# --- Celery (subscribers) -------------------------------------------------------------------
# With several hosts in BROKER_URL (";"), a worker that loses its node fails over to the next one.
CELERY_BROKER_URL = BROKER_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# AMQP heartbeats, in seconds: a worker whose broker connection went silent (a partition that
# drops packets, a broker host gone) notices within about two intervals and reconnects, and the
# broker requeues its unacknowledged messages as soon. Celery's default is 120 s.
CELERY_BROKER_HEARTBEAT = env.int("BROKER_HEARTBEAT", default=30)
# A worker failing over to another cluster node redeclares its exclusive remote-control queue
# while the cluster may still hold it for the lost connection (RESOURCE_LOCKED, a channel error):
# reconnect and try again instead of exiting with "Unrecoverable error".
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
# Celery's own connections do not wait for publisher confirms (task events are best effort);
# retries, dead letters and replays go through marketplace.celery.confirming_producer().
CELERY_BROKER_TRANSPORT_OPTIONS = {}
# Celery's Django fixup closes the database connection around every task unless this is set:
# reconnect every 1,000 tasks instead (a broken connection is dropped before the next task).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
# A message is acknowledged only once its handler finished. A task that gives up has already
# published its message, with the failure in its headers, to the dead-letter exchange (see
# marketplace/events/subscriber.py), so Celery acknowledges the original; a worker that dies
# mid-task returns its message to the queue, whose delivery limit ends a crash loop. A task killed
# by a time limit never reached that dead-lettering: it goes back to its queue the same way.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_ACKS_ON_FAILURE = True
CELERY_TASK_ACKS_ON_TIMEOUT = False
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CONSUMER = "marketplace.events.consumer:EventConsumer"
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# What a task prints (the console email backend's emails) goes to the terminal as it is, not as
# WARNING lines of the "celery.redirected" logger.
CELERY_WORKER_REDIRECT_STDOUTS = False

# Retry policy per subscriber: attempt n (from 0) waits retry_backoff * 2**n seconds, capped at
# retry_backoff_max, in the subscriber's TTL retry queue for that wait (never unacknowledged in a
# worker). There is no jitter: a wait never collapses to 0 s.
SUBSCRIBER_RETRY_DEFAULTS = {
    "max_retries": env.int("SUBSCRIBER_MAX_RETRIES", default=5),
    "retry_backoff": env.int("SUBSCRIBER_RETRY_BACKOFF", default=2),
    "retry_backoff_max": env.int("SUBSCRIBER_RETRY_BACKOFF_MAX", default=300),
}
# Every subscriber declared in the topology can be tuned with SUBSCRIBER_RETRY_<NAME> (JSON).
SUBSCRIBER_RETRY = {
    subscriber.name: {
        **SUBSCRIBER_RETRY_DEFAULTS,
        **env.json(f"SUBSCRIBER_RETRY_{subscriber.name.upper()}", default={}),
    }
    for subscriber in topology.SUBSCRIBERS
}
# Our own database being unreachable is not the downstream failing: such a failure waits this
# long in the retry queue and does not count against max_retries, for up to
# SUBSCRIBER_INFRA_RETRY_MAX_SECONDS from the first such failure; after that it counts as usual.
SUBSCRIBER_INFRA_RETRY_SECONDS = env.int("SUBSCRIBER_INFRA_RETRY_SECONDS", default=5)
SUBSCRIBER_INFRA_RETRY_MAX_SECONDS = env.int("SUBSCRIBER_INFRA_RETRY_MAX_SECONDS", default=3600)
# The retry queues each subscriber needs: one per distinct wait.
SUBSCRIBER_RETRY_DELAYS = {
    name: tuple(sorted({*topology.retry_delays(**policy), SUBSCRIBER_INFRA_RETRY_SECONDS}))
    for name, policy in SUBSCRIBER_RETRY.items()
}
# A worker whose queue was deleted under it republishes, once the queue is back, the outbox
# events created this many seconds before (its dedupe skips those it already had).
QUEUE_LOSS_BACKFILL_SECONDS = env.int("QUEUE_LOSS_BACKFILL_SECONDS", default=120)
# The dead-letter recorder removes resolved and archived failures from the dead-letter queues
# this often (seconds).
DEAD_LETTER_COMPACT_SECONDS = env.float("DEAD_LETTER_COMPACT_SECONDS", default=5.0)
# Dead letters the recorder holds unacknowledged at once (basic.qos): each is acknowledged as soon
# as its record commits; several recorders share the inbox.
DEAD_LETTER_RECORDER_PREFETCH = env.int("DEAD_LETTER_RECORDER_PREFETCH", default=50)
# The team is emailed about a failure group (subscriber, exception, message pattern) at most this
# often, with how many failed since: one outage is one email, not one per event.
DEAD_LETTER_ALERT_SECONDS = env.float("DEAD_LETTER_ALERT_SECONDS", default=300.0)

# --- Retention (manage.py prune_events, docs/operations.md) ---------------------------------
# Published outbox rows are deleted this many days after they were created and published; pending
# rows never are. backfill_events can only republish rows still here: this is how far back it reaches.
OUTBOX_RETENTION_DAYS = env.int("OUTBOX_RETENTION_DAYS", default=30)
# Dedupe markers (ProcessedEvent) are deleted after this many days, except those of events with an
# open failure. A marker must outlive every redelivery of its event: at least OUTBOX_RETENTION_DAYS
# (a backfill can redeliver any retained event) and longer than the longest retry chain (checked).
PROCESSED_EVENT_RETENTION_DAYS = env.int("PROCESSED_EVENT_RETENTION_DAYS", default=30)
# Resolved and archived failures (and their replay audit rows) are deleted after this many days
# without a new failure, resolution, replay or archive request. Open failures never are.
FAILED_EVENT_RETENTION_DAYS = env.int("FAILED_EVENT_RETENTION_DAYS", default=90)
# Rows deleted per transaction.
RETENTION_BATCH_SIZE = env.int("RETENTION_BATCH_SIZE", default=1000)
# When `celery beat` has the maintenance worker run prune_events: a crontab expression
# (minute hour day-of-month month day-of-week), in UTC.
RETENTION_SCHEDULE = env("RETENTION_SCHEDULE", default="30 3 * * *")
# The tasks are routed to the maintenance queue (marketplace/celery.py). A run still waiting after
# 6 hours (its worker was down) is dropped: the next one does the same work.
CELERY_BEAT_SCHEDULE = {
    "prune-events": {
        "task": "events.prune_events",
        "schedule": crontab.from_string(RETENTION_SCHEDULE),
        "options": {"expires": 6 * 3600},
    },
    # The rate limits' counters of ended windows (marketplace/ratelimits/), at the same time.
    "prune-rate-limit-counters": {
        "task": "ratelimits.prune_counters",
        "schedule": crontab.from_string(RETENTION_SCHEDULE),
        "options": {"expires": 6 * 3600},
    },
}
# No result backend, so nothing to expire; unset, beat would also send Celery's daily
# celery.backend_cleanup, to a "celery" queue that no worker consumes.
CELERY_RESULT_EXPIRES = None

# --- Notifications --------------------------------------------------------------------------
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT", default=10.0)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="orders@marketplace.localhost")
SERVER_EMAIL = env("SERVER_EMAIL", default="alerts@marketplace.localhost")
ADMINS = [("Marketplace team", email) for email in env.list("ADMINS", default=["team@marketplace.localhost"])]
SELLER_WEBHOOK_TIMEOUT = env.float("SELLER_WEBHOOK_TIMEOUT", default=5.0)
# Seller webhooks go to https URLs on global addresses only (notifications/webhooks.py): hosts listed
# here skip that check, and may use plain http (development's loopback; none by default in production).
SELLER_WEBHOOK_ALLOWED_HOSTS = env.list(
    "SELLER_WEBHOOK_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "::1"] if DEVELOPING else []
)
SELLER_WEBHOOK_REQUIRE_HTTPS = env.bool("SELLER_WEBHOOK_REQUIRE_HTTPS", default=not DEVELOPING)

# --- Customer segmentation ------------------------------------------------------------------
# A buyer is "new" after one order, "returning" from 2 orders, "loyal" from LOYAL_ORDERS orders,
# and "high_value" once lifetime spend reaches HIGH_VALUE_SPEND (high value wins over loyal).
SEGMENT_RETURNING_ORDERS = env.int("SEGMENT_RETURNING_ORDERS", default=2)
SEGMENT_LOYAL_ORDERS = env.int("SEGMENT_LOYAL_ORDERS", default=5)
SEGMENT_HIGH_VALUE_SPEND = env("SEGMENT_HIGH_VALUE_SPEND", default="1000.00")

# --- Metrics (docs/observability.md) --------------------------------------------------------
# user:password that /metrics requires (HTTP basic auth). Unset or empty: /metrics answers 404.
METRICS_BASIC_AUTH = env("METRICS_BASIC_AUTH", default="")
# Where every process of this deployment on this host (gunicorn workers, Celery pool processes,
# the relay) writes its counters for /metrics to add up (prometheus_client's multiprocess mode).
# One directory per database by default, so tests and benchmarks never mix with a running stack.
# Empty: each process keeps its metrics in memory, and /metrics shows only the process answering.
PROMETHEUS_MULTIPROC_DIR = env(
    "PROMETHEUS_MULTIPROC_DIR",
    default=str(Path(tempfile.gettempdir()) / "marketplace-metrics" / DATABASES["default"]["NAME"]),
)

# --- Traces (docs/observability.md#traces) --------------------------------------------------
# Tracing is set up by the OpenTelemetry SDK's own OTEL_* variables (marketplace/tracing.py), not
# here. This is where the admin's trace view links an event's trace: a URL with {trace_id} in it,
# e.g. http://127.0.0.1:16686/trace/{trace_id} (Jaeger). Empty: no link.
TRACING_UI_URL = env("TRACING_UI_URL", default="")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # trace_ids: "trace_id=... span_id=... " inside a traced operation (docs/observability.md#traces).
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(trace_ids)s%(message)s"},
    },
    "filters": {"trace_ids": {"()": "marketplace.tracing.LogTraceIds"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["trace_ids"]}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "amqp": {"level": "WARNING"},
        "kombu": {"level": "WARNING"},
        # One line per management API call (topology checks) or webhook; handlers log their own.
        "httpx": {"level": "WARNING"},
    },
}
