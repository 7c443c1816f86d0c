"""The API's HTML pages under the Content Security Policy (settings.CONTENT_SECURITY_POLICY).

Their scripts stay as strict as the admin's: our own origin, or inline with the response's nonce.
What each page needs beyond that is granted to that page only:

- Swagger UI (drf-spectacular, assets from drf-spectacular-sidecar): our template gives its inline
  style and start-up script the nonce (marketplace/templates/api_docs/); it draws icons from data:
  URIs.
- Redoc: no inline script (our template also drops its Google Fonts), but inline styles: its bundle
  inserts its own CSS as it loads, before it could be handed a nonce, so this page alone allows
  them (a nonce in style-src would void 'unsafe-inline', hence replaced, not added to). Its icons
  are data: URIs, its search index is built in a Web Worker started from a blob: URL, and its
  sidebar always shows Redocly's logo from cdn.redoc.ly (hidden when it cannot load).
- DRF's browsable API login page, like its other pages (marketplace/renderers.py), styles a few
  elements with style="" attributes: allowed for attributes only, never for <style> elements.
"""

from __future__ import annotations

from csp.constants import SELF, UNSAFE_INLINE
from csp.decorators import csp_replace, csp_update
from django.contrib.auth import views as auth_views
from django.urls import path
from django.utils.decorators import method_decorator
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView

from marketplace.renderers import STYLE_ATTRIBUTES_POLICY

# Added to the policy, which leaves these two to default-src: 'self' with them.
DATA_IMAGES = {"img-src": [SELF, "data:"]}
REDOC_EXTRAS = {"img-src": [SELF, "data:", "https://cdn.redoc.ly"], "worker-src": [SELF, "blob:"]}


@method_decorator(csp_update(DATA_IMAGES), name="dispatch")
class SwaggerView(SpectacularSwaggerView):
    template_name = "api_docs/swagger_ui.html"


@method_decorator(csp_update(REDOC_EXTRAS), name="dispatch")
@method_decorator(csp_replace({"style-src": [SELF, UNSAFE_INLINE]}), name="dispatch")
class RedocView(SpectacularRedocView):
    template_name = "api_docs/redoc.html"


# rest_framework.urls (the browsable API's log in and log out), its login page under the policy.
browsable_api_auth_urls = (
    [
        path(
            "login/",
            csp_update(STYLE_ATTRIBUTES_POLICY)(
                auth_views.LoginView.as_view(template_name="rest_framework/login.html")
            ),
            name="login",
        ),
        path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    ],
    "rest_framework",
)
