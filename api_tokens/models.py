from django.db import models
from knox.models import AbstractAuthToken
from knox.settings import CONSTANTS


class ApiToken(AbstractAuthToken):
    """A user's API token, as knox keeps it (KNOX_TOKEN_MODEL): never the token itself, only its
    SHA-512 ``digest`` and its first 15 characters (``token_key``, the lookup index; the 49 hex
    characters after them are what authenticates).

    knox's own model keys a token by its digest and lets it live forever; this one adds an id to
    list and revoke it by, a name that says what it is for, and an expiry every token has.
    """

    id = models.BigAutoField(primary_key=True)
    digest = models.CharField(max_length=CONSTANTS.DIGEST_LENGTH, unique=True)
    expiry = models.DateTimeField()
    name = models.CharField(max_length=100, blank=True, help_text="What the token is for, e.g. the client using it.")

    class Meta:
        verbose_name = "API token"

    def __str__(self):
        return f"{self.name or 'token'} #{self.pk} of {self.user}"
