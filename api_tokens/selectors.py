from django.db.models import QuerySet

from api_tokens.models import ApiToken


def api_token_list(*, user) -> QuerySet[ApiToken]:
    """``user``'s tokens, expired ones included (until they are pruned), oldest first."""
    return ApiToken.objects.filter(user=user).order_by("created", "id")
