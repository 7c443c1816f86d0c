from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from marketplace.problems import (
    PROBLEM_CONTENT_TYPE,
    IdempotencyKeyReusedProblemSerializer,
    InsufficientStockProblemSerializer,
    ProblemSerializer,
)
from orders import selectors, services
from orders.filters import ProductFilter
from orders.serializers import OrderInputSerializer, OrderOutputSerializer, ProductOutputSerializer

MAX_IDEMPOTENCY_KEY_LENGTH = 255
# Responses are keyed (status, media type) so that errors are documented as problem+json, as they are
# served. All keys of one operation are tuples: drf-spectacular takes the response with the smallest
# str(key) as the main one, so a plain 200 next to (401, ...) would turn the order list into a retrieve.
JSON = "application/json"


def _problem(description: str, serializer=ProblemSerializer) -> OpenApiResponse:
    """An error response; document it under its status and PROBLEM_CONTENT_TYPE, the type it is served with."""
    return OpenApiResponse(response=serializer, description=description)


class ProductListApi(generics.ListAPIView):
    """Products for sale, oldest first."""

    permission_classes = [AllowAny]
    serializer_class = ProductOutputSerializer
    filterset_class = ProductFilter

    def get_queryset(self):
        return selectors.product_list()


class OrderListCreateApi(generics.GenericAPIView):
    serializer_class = OrderOutputSerializer

    def get_queryset(self):
        return selectors.order_list(buyer=self.request.user)

    @extend_schema(
        summary="List my orders",
        responses={
            (200, JSON): OrderOutputSerializer(many=True),
            (401, PROBLEM_CONTENT_TYPE): _problem("Missing or bad token."),
        },
    )
    def get(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(OrderOutputSerializer(page, many=True).data)

    @extend_schema(
        summary="Place an order",
        description=(
            "Checks every line, takes the stock and saves the order in one transaction, then "
            "publishes one `order.placed` event. All lines or nothing. Prices come from the "
            "products; a client never sets them. With `Idempotency-Key`, repeating the same "
            "request returns the original order instead of placing a new one."
        ),
        request=OrderInputSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="Any unique string (a UUID is good) to make retries safe; per buyer.",
            ),
        ],
        responses={
            (201, JSON): OrderOutputSerializer,
            (400, PROBLEM_CONTENT_TYPE): _problem(
                "Invalid input: malformed JSON, wrong types, unknown or inactive product, "
                "bad quantity, duplicate product, no or too many lines."
            ),
            (401, PROBLEM_CONTENT_TYPE): _problem("Missing or bad token."),
            (409, PROBLEM_CONTENT_TYPE): _problem(
                "Not enough stock for one or more lines.", InsufficientStockProblemSerializer
            ),
            (413, PROBLEM_CONTENT_TYPE): _problem("Request body too large."),
            (422, PROBLEM_CONTENT_TYPE): _problem(
                "Idempotency-Key reused with a different request body.", IdempotencyKeyReusedProblemSerializer
            ),
        },
    )
    def post(self, request):
        idempotency_key = request.headers.get("Idempotency-Key")
        if idempotency_key is not None and not (
            0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH and idempotency_key.isprintable()
        ):
            raise ValidationError(
                {"Idempotency-Key": [f"Must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters."]}
            )
        serializer = OrderInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        placed = services.order_place(
            buyer=request.user,
            lines=[
                services.LineRequest(product_id=line["product"], quantity=line["quantity"])
                for line in serializer.validated_data["lines"]
            ],
            correlation_id=request.request_id,
            idempotency_key=idempotency_key,
        )
        order = selectors.order_get(buyer=request.user, order_id=placed.order.pk) if placed.replayed else placed.order
        headers = {"Location": reverse("order-detail", args=[order.pk])}
        if placed.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(OrderOutputSerializer(order).data, status=status.HTTP_201_CREATED, headers=headers)


class OrderDetailApi(generics.GenericAPIView):
    serializer_class = OrderOutputSerializer

    @extend_schema(
        summary="One of my orders",
        responses={
            (200, JSON): OrderOutputSerializer,
            (401, PROBLEM_CONTENT_TYPE): _problem("Missing or bad token."),
            (404, PROBLEM_CONTENT_TYPE): _problem("No such order among yours."),
        },
    )
    def get(self, request, order_id: int):
        order = selectors.order_get(buyer=request.user, order_id=order_id)
        if order is None:
            raise NotFound("No such order.")
        return Response(OrderOutputSerializer(order).data)
