from api_tokens import apis
from orders.urls import with_and_without_slash

urlpatterns = [
    *with_and_without_slash("tokens/", apis.ApiTokenListIssueApi, "token-list"),
    *with_and_without_slash("tokens/current/", apis.ApiTokenCurrentApi, "token-current"),
    *with_and_without_slash("tokens/<int:token_id>/", apis.ApiTokenDetailApi, "token-detail"),
]
