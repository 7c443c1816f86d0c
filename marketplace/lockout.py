"""Login lockout's two hooks into django-axes (settings, "Login lockout").

lockout_address (AXES_CLIENT_IP_CALLABLE): the address failures are counted against.
locked_out (AXES_LOCKOUT_CALLABLE): what a locked-out login answers. 429 Too Many Requests rather
than 403: the refusal is about how many attempts came, and it ends by itself. Retry-After is the
whole cool-off, since this attempt has just started it again. The page has the admin login page's
look, and says why and for how long.
"""

from __future__ import annotations

import math
from typing import Any

from axes.helpers import get_client_username, get_cool_off
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from marketplace.client_ip import client_ip
from marketplace.ratelimits.throttles import UNKNOWN_ADDRESS, client_identity

LOCKED_OUT_STATUS = 429


def lockout_address(request: HttpRequest) -> str | None:
    """The client's address (marketplace/client_ip.py) as the rate limits count it: an IPv6 client
    as its /64, whose every address its host may use, here as the /64's first address (axes keeps
    an IP address); an IPv4-mapped one as its IPv4 address."""
    identity = client_identity(client_ip(request))
    return None if identity == UNKNOWN_ADDRESS else identity.split("/")[0]


def locked_out(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict[str, Any] | None
) -> HttpResponse:
    cool_off = get_cool_off(request)
    seconds = math.ceil(cool_off.total_seconds()) if cool_off else 0
    context = {
        **admin.site.each_context(request),
        "title": "Too many failed logins",
        "username": get_client_username(request, credentials) or "",
        "cool_off_minutes": math.ceil(seconds / 60),
        "login_url": request.get_full_path(),
    }
    response = TemplateResponse(request, "registration/locked_out.html", context, status=LOCKED_OUT_STATUS)
    if seconds:
        response["Retry-After"] = str(seconds)
    return response.render()
