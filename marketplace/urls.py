from django.contrib import admin
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView

from marketplace import api_pages
from marketplace.events.apis import AsyncApiDocumentApi
from marketplace.health import healthz
from marketplace.problems import not_found_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("orders.urls")),
    path("api/", include("api_tokens.urls")),
    # With and without the trailing slash, as the API's own routes (see orders.urls).
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/schema", SpectacularAPIView.as_view()),
    # Swagger UI and Redoc under the Content Security Policy (marketplace/api_pages.py).
    path("api/docs/", api_pages.SwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/docs", api_pages.SwaggerView.as_view(url_name="schema")),
    path("api/redoc/", api_pages.RedocView.as_view(url_name="schema"), name="api-redoc"),
    path("api/redoc", api_pages.RedocView.as_view(url_name="schema")),
    # The event API (AMQP) as AsyncAPI 3.0, generated like docs/asyncapi.json (marketplace/events/asyncapi.py).
    path("api/asyncapi.json", AsyncApiDocumentApi.as_view(), name="asyncapi"),
    # Any other /api/ path is a problem+json 404 whatever DEBUG says: with no route matching, Django
    # would answer with its HTML debug page listing every route (handler404 is not used under
    # DEBUG), or redirect to the path with a slash appended. Exempt from CSRF, as the API views
    # are, so that a POST gets the 404 and not the HTML CSRF failure page.
    re_path(r"^api(?:/|$)", csrf_exempt(not_found_view)),
    path("api-auth/", include(api_pages.browsable_api_auth_urls)),
    path("healthz", healthz, name="healthz"),
    path("", include("marketplace.metrics.urls")),  # /metrics (Prometheus, basic auth)
]

handler404 = "marketplace.problems.not_found_view"
handler500 = "marketplace.problems.server_error_view"
