"""DRF's clear-text tokens (rest_framework.authtoken, no longer installed) become knox tokens.

Each DRF key is kept as a token of the same value: the digest and prefix knox keeps for it, so the
client sending it keeps working, until API_TOKEN_TTL from this migration (name "migrated DRF
token"). Then the clear-text table is dropped, and the authtoken app's migration records deleted as
`migrate authtoken zero` would have, so that the app could be installed again from scratch. A
database that never had DRF tokens has nothing to convert.
"""

from django.conf import settings
from django.db import migrations
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone
from knox.crypto import hash_token
from knox.settings import CONSTANTS

DRF_TOKEN_TABLE = "authtoken_token"
MIGRATED_NAME = "migrated DRF token"


def convert_drf_tokens(apps, schema_editor):
    connection = schema_editor.connection
    if DRF_TOKEN_TABLE not in connection.introspection.table_names():
        return
    ApiToken = apps.get_model("api_tokens", "ApiToken")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, user_id FROM {DRF_TOKEN_TABLE}")  # noqa: S608 - a constant
        keys = cursor.fetchall()
    expiry = timezone.now() + settings.API_TOKEN_TTL
    ApiToken.objects.using(connection.alias).bulk_create(
        ApiToken(
            user_id=user_id,
            token_key=key[: CONSTANTS.TOKEN_KEY_LENGTH],
            digest=hash_token(key),
            expiry=expiry,
            name=MIGRATED_NAME,
        )
        for key, user_id in keys
    )
    schema_editor.execute(f"DROP TABLE {DRF_TOKEN_TABLE}")
    MigrationRecorder(connection).migration_qs.filter(app="authtoken").delete()


class Migration(migrations.Migration):
    dependencies = [("api_tokens", "0001_initial")]

    operations = [
        # Backwards there is nothing to restore: the clear-text keys are gone on purpose.
        migrations.RunPython(convert_drf_tokens, migrations.RunPython.noop),
    ]
