"""Production is the default, and a production start refuses what is unsafe, naming the variable.

Settings are read once per process, so what a start does is tested in subprocesses, with the
production environment they would have (the test process itself runs development settings:
tests/settings.py). The rules themselves are tested in process too, one case each.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from marketplace import checks
from marketplace.redaction import redact_url

ROOT = Path(__file__).resolve().parents[2]
STRONG_KEY = secrets.token_urlsafe(50)
UNSAFE = {
    # variable named in the refusal: the environment that must be refused
    "no key": ("DJANGO_SECRET_KEY", {"DJANGO_SECRET_KEY": ""}),
    "the development key": ("DJANGO_SECRET_KEY", {"DJANGO_SECRET_KEY": checks.DEVELOPMENT_SECRET_KEY}),
    "a short key": ("DJANGO_SECRET_KEY", {"DJANGO_SECRET_KEY": secrets.token_urlsafe(30)}),
    "a key of few characters": ("DJANGO_SECRET_KEY", {"DJANGO_SECRET_KEY": "abcd" * 20}),
    "a django-insecure- key": ("DJANGO_SECRET_KEY", {"DJANGO_SECRET_KEY": "django-insecure-" + STRONG_KEY}),
    "no allowed hosts": ("DJANGO_ALLOWED_HOSTS", {"DJANGO_ALLOWED_HOSTS": ""}),
    "debug on": ("DJANGO_DEBUG", {"DJANGO_DEBUG": "true"}),
}


def production_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any Django or deployment choice, as production: a strong
    key and allowed hosts, every other setting at its default."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DJANGO_", "MARKETPLACE_ENV", "METRICS_BASIC_AUTH"))
    }
    return (
        env
        | {
            "MARKETPLACE_ENV": "production",
            "DJANGO_SETTINGS_MODULE": "marketplace.settings",
            "DJANGO_SECRET_KEY": STRONG_KEY,
            "DJANGO_ALLOWED_HOSTS": "shop.example.com",
            "PYTHONPATH": str(ROOT),
        }
        | overrides
    )


def manage(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_start(env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    """The Procfile's web process; it must exit by itself (a refused start), else it is stopped."""
    argv = [str(ROOT / ".venv/bin/gunicorn"), "marketplace.wsgi", "--bind", f"127.0.0.1:{free_port()}"]
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"gunicorn started with unsafe settings:\n{output[-3000:]}")
    return subprocess.CompletedProcess(argv, process.returncode, output, "")


# --- what production refuses --------------------------------------------------------------------


@pytest.mark.parametrize("case", list(UNSAFE))
def test_production_refuses_unsafe_settings_naming_the_variable(case):
    variable, env = UNSAFE[case]
    arguments = {
        "debug": env.get("DJANGO_DEBUG") == "true",
        "secret_key": env.get("DJANGO_SECRET_KEY", STRONG_KEY),
        "allowed_hosts": [host for host in env.get("DJANGO_ALLOWED_HOSTS", "shop.example.com").split(",") if host],
    }

    with pytest.raises(ImproperlyConfigured, match=variable):
        checks.check_production_settings(**arguments)


def test_production_accepts_a_strong_key_and_allowed_hosts():
    checks.check_production_settings(debug=False, secret_key=STRONG_KEY, allowed_hosts=["shop.example.com"])


@pytest.mark.parametrize("case", ["no key", "a short key", "no allowed hosts", "debug on"])
def test_every_process_refuses_to_start_with_unsafe_production_settings(case):
    variable, env = UNSAFE[case]

    # Any process: the settings refuse while they load (here manage.py, as the relay, the recorder
    # and migrate start; Celery and gunicorn load the same settings).
    result = manage("check", env=production_env(**env))

    assert result.returncode != 0
    assert f"ImproperlyConfigured: {variable}" in result.stderr


def test_unset_means_production():
    env = production_env()
    del env["MARKETPLACE_ENV"], env["DJANGO_SECRET_KEY"]

    result = subprocess.run(
        [sys.executable, "-c", "import marketplace.settings"], cwd=ROOT, env=env, capture_output=True, text=True
    )

    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY is not set: production" in result.stderr


def test_the_web_refuses_to_start_with_a_weak_key():
    result = gunicorn_start(production_env(DJANGO_SECRET_KEY="change-me"))

    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY has 9 characters, fewer than 50" in result.stdout


# --- the demo admin -----------------------------------------------------------------------------


def database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.django_db(transaction=True)
def test_the_web_refuses_to_start_while_the_demo_admin_password_works():
    get_user_model().objects.create_superuser("admin", "admin@example.com", "admin")
    env = production_env(DATABASE_URL=database_url(), DATABASE_CONN_MAX_AGE="0")

    result = gunicorn_start(env)
    check = manage("check", "--deploy", "--database", "default", env=env)

    assert result.returncode != 0
    assert "ImproperlyConfigured: the superuser 'admin' still has the demo password 'admin'" in result.stdout
    assert check.returncode != 0
    assert "(marketplace.E001) the superuser 'admin' still has the demo password 'admin'" in check.stderr


@pytest.mark.django_db
def test_a_changed_admin_password_is_accepted():
    admin = get_user_model().objects.create_superuser("admin", "admin@example.com", "admin")
    assert checks.demo_admin_password_set()
    admin.set_password(secrets.token_urlsafe(16))
    admin.save()

    assert not checks.demo_admin_password_set()
    checks.refuse_demo_admin()
    assert checks.check_demo_admin(databases=["default"]) == []


@pytest.mark.django_db
def test_seed_demo_creates_no_demo_admin_in_production(settings, capsys):
    settings.DEVELOPING = False

    call_command("seed_demo")

    assert not get_user_model().objects.filter(username="admin").exists()
    assert "admin / admin" not in capsys.readouterr().out


@pytest.mark.django_db
def test_seed_demo_creates_the_demo_admin_in_development(settings):
    settings.DEVELOPING = True

    call_command("seed_demo", stdout=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process

    assert checks.demo_admin_password_set()


# --- HTTPS behind a TLS-terminating proxy -------------------------------------------------------


def test_check_deploy_reports_nothing_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert result.stderr == ""


def test_development_is_explicit_and_check_deploy_says_it_is_not_production():
    result = manage("check", "--deploy", env=production_env(MARKETPLACE_ENV="development", DJANGO_SECRET_KEY=""))

    assert result.returncode == 0  # warnings only: development starts
    for warning in ("W004", "W008", "W009", "W012", "W016", "W018"):
        assert f"security.{warning}" in result.stderr


@pytest.fixture
def https_only(settings, client):
    """Production's HTTPS settings on the test client (read when its first request builds the middleware)."""
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    return client


@pytest.mark.django_db
def test_plain_http_is_redirected_to_https_except_the_probes(https_only, settings):
    settings.METRICS_BASIC_AUTH = "metrics:" + secrets.token_urlsafe(12)

    redirected = https_only.get("/api/products/")
    healthz = https_only.get("/healthz")
    metrics = https_only.get("/metrics")

    assert redirected.status_code == 301
    assert redirected["Location"] == "https://testserver/api/products/"
    assert healthz.status_code in (200, 503)
    assert metrics.status_code == 401  # answered over plain HTTP (asks for its credentials)


@pytest.mark.django_db
def test_https_through_the_proxy_is_served_with_hsts(https_only):
    response = https_only.get("/api/products/", HTTP_X_FORWARDED_PROTO="https")

    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"


# --- redaction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://shop.example/hooks/orders", "https://shop.example/hooks/orders"),
        ("http://shop.example\t/orders", "http://shop.example\t/orders"),  # as written: it is the failure's cause
        ("https://user:pa55@shop.example:8443/hook", "https://***@shop.example:8443/hook"),
        ("https://tok3n@shop.example/hook", "https://***@shop.example/hook"),
        ("https://shop.example/hook?token=tok3n&v=2#sig", "https://shop.example/hook?token=***&v=***#***"),
        ("https://shop.example/hook?tok3n", "https://shop.example/hook?tok3n=***"),
        ("http://[::1", "<a URL that cannot be parsed, 11 characters>"),
    ],
)
def test_redact_url_keeps_where_and_drops_credentials(url, shown):
    assert redact_url(url) == shown
