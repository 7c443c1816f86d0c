"""What a production start refuses, and the deploy check of the demo admin.

Settings (MARKETPLACE_ENV=production, the default) call check_production_settings() while they
load, so every process refuses to start, naming the variable, with debug on, a weak or missing
DJANGO_SECRET_KEY or no DJANGO_ALLOWED_HOSTS. The demo admin's password needs the database:
marketplace/wsgi.py asks demo_admin_password_set() when the web process starts (the admin login
is served there only), and ``manage.py check --deploy --database default`` reports it too.

This module is imported by the settings: nothing here may read django.conf.settings at import.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core import checks
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

logger = logging.getLogger(__name__)

PRODUCTION = "production"
DEVELOPMENT = "development"
# The key development runs with when DJANGO_SECRET_KEY is unset; published, so never accepted in production.
DEVELOPMENT_SECRET_KEY = "insecure-local-development-key-change-me"  # noqa: S105 - the published development key, refused in production
# seed_demo's admin (orders/management/commands/seed_demo.py), created in development only.
DEMO_ADMIN_USERNAME = "admin"
DEMO_ADMIN_PASSWORD = "admin"  # noqa: S105 - the published demo password, which a production start refuses
FIX_KEY = (
    "set it to a long random value from your secret store, e.g. "
    "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
)


def secret_key_weakness(key: str) -> str | None:
    """Why ``key`` must not sign production sessions and tokens (Django's security.W009 criteria,
    plus the published development key); None for a strong key."""
    if not key:
        return "is not set"
    if key == DEVELOPMENT_SECRET_KEY:
        return "is the published development key"
    if key.startswith(SECRET_KEY_INSECURE_PREFIX):
        return f"starts with {SECRET_KEY_INSECURE_PREFIX!r} (a key Django generated for development)"
    if len(key) < SECRET_KEY_MIN_LENGTH:
        return f"has {len(key)} characters, fewer than {SECRET_KEY_MIN_LENGTH}"
    if len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        return f"has fewer than {SECRET_KEY_MIN_UNIQUE_CHARACTERS} different characters"
    return None


def check_production_settings(*, debug: bool, secret_key: str, allowed_hosts: list[str]) -> None:
    """Raise ImproperlyConfigured, naming the variable, for settings production must not run with."""
    if debug:
        raise ImproperlyConfigured(
            "DJANGO_DEBUG is true in production: debug pages show settings, code and data to anyone. "
            "Unset it, or run with MARKETPLACE_ENV=development on a developer machine."
        )
    weakness = secret_key_weakness(secret_key)
    if weakness:
        raise ImproperlyConfigured(
            f"DJANGO_SECRET_KEY {weakness}: production (MARKETPLACE_ENV={PRODUCTION}, the default) "
            f"refuses to start without a strong one; {FIX_KEY}."
        )
    if not allowed_hosts:
        raise ImproperlyConfigured(
            "DJANGO_ALLOWED_HOSTS is empty: production (MARKETPLACE_ENV=production, the default) needs the "
            "comma-separated host names the API answers to, e.g. DJANGO_ALLOWED_HOSTS=shop.example.com."
        )


def demo_admin_password_set() -> bool:
    """True if a superuser named "admin" still has seed_demo's password "admin".

    One query; hashes only when such a superuser exists, and never rewrites the stored hash
    (unlike User.check_password, which upgrades it).
    """
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import check_password

    encoded = (
        get_user_model()
        .objects.filter(username=DEMO_ADMIN_USERNAME, is_superuser=True)
        .values_list("password", flat=True)
        .first()
    )
    return encoded is not None and check_password(DEMO_ADMIN_PASSWORD, encoded)


DEMO_ADMIN_PROBLEM = (
    f"the superuser {DEMO_ADMIN_USERNAME!r} still has the demo password {DEMO_ADMIN_PASSWORD!r} "
    "(manage.py seed_demo, for development)"
)
DEMO_ADMIN_HINT = f"change it (manage.py changepassword {DEMO_ADMIN_USERNAME}) or delete that user."


def refuse_demo_admin() -> None:
    """At a production web start: raise ImproperlyConfigured if the demo admin password is set.

    A database that cannot be reached yet does not stop the start (the web answers /healthz 503
    and waits for it, as it always has); that is logged, and ``check --deploy`` still reports it.
    """
    try:
        found = demo_admin_password_set()
    except DatabaseError as exc:
        logger.warning("could not check for the demo admin password, the database is unavailable: %s", exc)
        return
    if found:
        raise ImproperlyConfigured(f"{DEMO_ADMIN_PROBLEM}: production refuses to start; {DEMO_ADMIN_HINT}")


@checks.register(checks.Tags.security, checks.Tags.database, deploy=True)
def check_demo_admin(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check --deploy --database default``: the demo admin password is an error."""
    if not databases:
        return []
    try:
        found = demo_admin_password_set()
    except DatabaseError as exc:
        return [checks.Warning(f"could not check for the demo admin password: {exc}", id="marketplace.W001")]
    if found:
        return [checks.Error(DEMO_ADMIN_PROBLEM, hint=DEMO_ADMIN_HINT, id="marketplace.E001")]
    return []
