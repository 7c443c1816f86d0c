"""Upgrading from DRF's clear-text tokens: api_tokens' migration 0002 turns each key into a knox
token of the same value, expiring API_TOKEN_TTL later, and drops the clear-text table."""

from __future__ import annotations

import binascii
import importlib
import os
from datetime import timedelta

import pytest
from django.apps import apps
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from api_tokens.models import ApiToken
from tests.api_tokens.conftest import authenticates
from tests.api_tokens.test_authentication import tables_holding
from tests.factories import BuyerFactory

pytestmark = pytest.mark.django_db

migration = importlib.import_module("api_tokens.migrations.0002_convert_drf_tokens")


def drf_key() -> str:
    """A key as rest_framework.authtoken makes one (Token.generate_key)."""
    return binascii.hexlify(os.urandom(20)).decode()


def install_drf_tokens(keys: dict) -> None:
    """The table and migration records rest_framework.authtoken leaves, holding ``keys`` (key → user)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, created timestamptz NOT NULL, "
            "user_id integer NOT NULL UNIQUE REFERENCES auth_user (id) DEFERRABLE INITIALLY DEFERRED)"
        )
        for key, user in keys.items():
            cursor.execute("INSERT INTO authtoken_token VALUES (%s, now(), %s)", [key, user.pk])
        # Checked now, as they were when DRF made them in a transaction long committed (a table
        # with deferred checks pending cannot be dropped).
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    for name in ("0001_initial", "0002_auto_20160226_1747", "0003_tokenproxy", "0004_alter_tokenproxy_options"):
        MigrationRecorder.Migration.objects.create(app="authtoken", name=name)


def convert() -> None:
    with connection.schema_editor() as schema_editor:
        migration.convert_drf_tokens(apps, schema_editor)


def test_each_drf_key_keeps_working_until_it_expires_and_the_clear_text_is_gone(settings):
    settings.API_TOKEN_TTL = timedelta(days=14)
    alice, bob = BuyerFactory(), BuyerFactory()
    keys = {drf_key(): alice, drf_key(): bob}
    install_drf_tokens(keys)
    assert tables_holding(next(iter(keys)))  # the clear text, before

    convert()

    assert "authtoken_token" not in connection.introspection.table_names()
    assert not MigrationRecorder.Migration.objects.filter(app="authtoken").exists()
    for key, user in keys.items():
        assert tables_holding(key) == []
        converted = ApiToken.objects.get(user=user)
        assert converted.name == migration.MIGRATED_NAME
        assert abs(converted.expiry - (timezone.now() + timedelta(days=14))) < timedelta(minutes=1)
        assert authenticates(key)


def test_a_converted_key_is_refused_once_expired():
    key = drf_key()
    install_drf_tokens({key: BuyerFactory()})
    convert()

    ApiToken.objects.update(expiry=timezone.now())

    assert not authenticates(key)


def test_a_database_without_drf_tokens_has_nothing_to_convert():
    convert()

    assert not ApiToken.objects.exists()
