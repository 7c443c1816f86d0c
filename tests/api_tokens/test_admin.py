import pytest

from api_tokens.models import ApiToken
from api_tokens.services import api_token_issue

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """admin_client logs in a superuser with a password; the real hasher is slow on purpose."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_the_admin_lists_tokens_and_revokes_them_but_issues_none(admin_client, buyer):
    issued = api_token_issue(user=buyer, name="ci")
    url = f"/admin/api_tokens/apitoken/{issued.api_token.pk}/"

    changelist = admin_client.get("/admin/api_tokens/apitoken/")
    page = admin_client.get(url + "change/")

    assert changelist.status_code == page.status_code == 200
    assert issued.token not in changelist.content.decode() + page.content.decode()
    assert admin_client.get("/admin/api_tokens/apitoken/add/").status_code == 403
    assert admin_client.post(url + "delete/", {"post": "yes"}).status_code == 302
    assert not ApiToken.objects.exists()
