from django.core.validators import RegexValidator
from rest_framework import serializers

from marketplace.problems import ProblemSerializer


class ApiTokenOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    created = serializers.DateTimeField()
    expiry = serializers.DateTimeField(help_text="The token is refused from then on.")


class IssuedApiTokenOutputSerializer(ApiTokenOutputSerializer):
    token = serializers.CharField(
        help_text="Send it as `Authorization: Token <token>`. Shown this once: only its digest is kept."
    )


class JSONStringField(serializers.CharField):
    """A JSON string, never a number: DRF's CharField turns 0 into "0"."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


# No control characters (PostgreSQL cannot store a NUL); kept as sent, spaces included, so that
# what the schema allows is what is accepted.
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"


class ApiTokenIssueInputSerializer(serializers.Serializer):
    name = JSONStringField(
        max_length=100,
        trim_whitespace=False,
        validators=[RegexValidator(NAME_PATTERN, "No control characters.")],
        help_text="What the token is for (the client, machine or job using it), to tell it apart.",
    )


class TooManyTokensProblemSerializer(ProblemSerializer):
    limit = serializers.IntegerField(help_text="How many live tokens one user may have (API_TOKEN_LIMIT_PER_USER).")
