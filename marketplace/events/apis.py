"""The event API's AsyncAPI document over HTTP: public and read-only, like the OpenAPI schema."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.views import APIView

from marketplace.events.asyncapi import served_asyncapi_json


class AsyncApiDocumentApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(exclude=True)  # an AMQP contract, not an HTTP operation
    def get(self, request: Request) -> HttpResponse:
        return HttpResponse(served_asyncapi_json(), content_type="application/json")
