import re

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from marketplace.pagination import StrictPageNumberPagination
from marketplace.problems import (
    DATABASE_RETRY_AFTER_SECONDS,
    PROBLEM_CONTENT_TYPE,
    ProblemSerializer,
    RateLimitedProblemSerializer,
)
from marketplace.ratelimits.throttles import OrderPlacementThrottle
from orders import selectors, services
from orders.filters import MAX_ID, ProductFilter
from orders.serializers import (
    IdempotencyKeyReusedProblemSerializer,
    InsufficientStockProblemSerializer,
    OrderInputSerializer,
    OrderNotCancellableProblemSerializer,
    OrderOutputSerializer,
    ProductOutputSerializer,
)

MAX_IDEMPOTENCY_KEY_LENGTH = 255
# Printable ASCII, no leading or trailing space: HTTP trims those from a header value, so a key
# " a" would arrive as "a" and " " as an empty key. The schema carries the same pattern.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~](?:[ -~]*[!-~])?$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
# Responses are keyed (status, media type) so that errors are documented as problem+json, as they are
# served. All keys of one operation are tuples: drf-spectacular takes the response with the smallest
# str(key) as the main one, so a plain 200 next to (401, ...) would turn the order list into a retrieve.
JSON = "application/json"


def _problem(description: str, serializer=ProblemSerializer) -> OpenApiResponse:
    """An error response; document it under its status and PROBLEM_CONTENT_TYPE, the type it is served with."""
    return OpenApiResponse(response=serializer, description=description)


# Every operation reads the database: when PostgreSQL cannot be reached it answers 503 (see
# marketplace.problems), with Retry-After.
DATABASE_UNAVAILABLE = {
    (503, PROBLEM_CONTENT_TYPE): _problem(
        "The database cannot be reached. Retry after `Retry-After` seconds (an order with the same "
        "`Idempotency-Key`, so that it is never placed twice)."
    )
}
# Every operation counts the requests without valid credentials of each client address
# (marketplace/ratelimits/): past the limit, it answers 429 with Retry-After.
RATE_LIMITED = {
    (429, PROBLEM_CONTENT_TYPE): _problem(
        "Too many requests without valid credentials (none, or a wrong token) from this client address "
        "(`API_RATE_LIMIT_UNAUTHENTICATED`): until the window ends, after `Retry-After` seconds, every "
        "request from it is refused, with credentials or without.",
        RateLimitedProblemSerializer,
    )
}
# A response header: drf-spectacular takes those as parameters with `response` set.
RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    {"type": "integer", "minimum": 1},
    OpenApiParameter.HEADER,
    required=True,
    response=[429, 503],
    description=(
        f"Seconds to wait before retrying: {DATABASE_RETRY_AFTER_SECONDS} after a 503; after a 429, "
        "until the rate limit's window ends."
    ),
)
NOT_AUTHENTICATED = {(401, PROBLEM_CONTENT_TYPE): _problem("Missing or bad token.")}
ORDER_ID = OpenApiParameter("order_id", {"type": "integer", "minimum": 1, "maximum": MAX_ID}, OpenApiParameter.PATH)
NOT_ONE_OF_MY_ORDERS = {(404, PROBLEM_CONTENT_TYPE): _problem("No such order among yours (or not an order id at all).")}
PAGE_PROBLEMS = {
    (400, PROBLEM_CONTENT_TYPE): _problem("Invalid query parameter, e.g. `page` not an integer from 1."),
    (404, PROBLEM_CONTENT_TYPE): _problem("`page` is past the last page."),
}


class ProductListApi(generics.ListAPIView):
    """Products for sale, oldest first."""

    permission_classes = [AllowAny]
    serializer_class = ProductOutputSerializer
    filterset_class = ProductFilter
    pagination_class = StrictPageNumberPagination

    def get_queryset(self):
        return selectors.product_list()

    @extend_schema(
        summary="List products for sale",
        description=(
            "Active products, oldest first, paginated. No token needed; a bad token is still refused. "
            "A filter parameter that is present must be valid: `seller=abc` or `in_stock=maybe` is a 400."
        ),
        parameters=[RETRY_AFTER],
        responses={
            (200, JSON): ProductOutputSerializer(many=True),
            **PAGE_PROBLEMS,
            **NOT_AUTHENTICATED,
            **RATE_LIMITED,
            **DATABASE_UNAVAILABLE,
        },
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class OrderListCreateApi(generics.GenericAPIView):
    serializer_class = OrderOutputSerializer
    pagination_class = StrictPageNumberPagination

    def get_queryset(self):
        return selectors.order_list(buyer=self.request.user)

    def get_throttles(self):
        # Placing an order has a limit of its own, per buyer; reading one's orders has none.
        if self.request.method == "POST":
            return [*super().get_throttles(), OrderPlacementThrottle()]
        return super().get_throttles()

    @extend_schema(
        summary="List my orders",
        description="My orders, newest first, paginated.",
        parameters=[RETRY_AFTER],
        responses={
            (200, JSON): OrderOutputSerializer(many=True),
            **PAGE_PROBLEMS,
            **NOT_AUTHENTICATED,
            **RATE_LIMITED,
            **DATABASE_UNAVAILABLE,
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
                {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
                OpenApiParameter.HEADER,
                pattern=IDEMPOTENCY_KEY_PATTERN,
                description=(
                    "Any unique string (a UUID is good) to make retries safe; per buyer. "
                    f"1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters, "
                    "not starting or ending with a space."
                ),
            ),
            OpenApiParameter(
                "Location",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                required=True,
                response=[201],
                description="The order's URL.",
            ),
            OpenApiParameter(
                "Idempotent-Replayed",
                {"type": "string", "enum": ["true"]},
                OpenApiParameter.HEADER,
                response=[201],
                description="Present when the order was placed by an earlier request with this Idempotency-Key.",
            ),
            RETRY_AFTER,
        ],
        responses={
            (201, JSON): OrderOutputSerializer,
            (400, PROBLEM_CONTENT_TYPE): _problem(
                "Invalid input: malformed JSON, wrong types, unknown or inactive product, bad quantity, "
                "duplicate product, no or too many lines, malformed Idempotency-Key."
            ),
            **NOT_AUTHENTICATED,
            (409, PROBLEM_CONTENT_TYPE): _problem(
                "Not enough stock for one or more lines.", InsufficientStockProblemSerializer
            ),
            (413, PROBLEM_CONTENT_TYPE): _problem("Request body too large."),
            (415, PROBLEM_CONTENT_TYPE): _problem("The body is not `application/json`."),
            (422, PROBLEM_CONTENT_TYPE): _problem(
                "Idempotency-Key reused with a different request body.", IdempotencyKeyReusedProblemSerializer
            ),
            (429, PROBLEM_CONTENT_TYPE): _problem(
                "Too many orders from this buyer in the current window (`API_RATE_LIMIT_ORDERS`; every "
                "attempt counts), or too many requests without valid credentials from this client address "
                "(`API_RATE_LIMIT_UNAUTHENTICATED`). Nothing was placed; retry after `Retry-After` seconds.",
                RateLimitedProblemSerializer,
            ),
            **DATABASE_UNAVAILABLE,
        },
    )
    def post(self, request):
        idempotency_key = request.headers.get("Idempotency-Key")
        if idempotency_key is not None and not (
            len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH and _IDEMPOTENCY_KEY.fullmatch(idempotency_key)
        ):
            raise ValidationError(
                {
                    "Idempotency-Key": [
                        f"Must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters, "
                        "not starting or ending with a space."
                    ]
                }
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
        parameters=[ORDER_ID, RETRY_AFTER],
        responses={
            (200, JSON): OrderOutputSerializer,
            **NOT_AUTHENTICATED,
            **NOT_ONE_OF_MY_ORDERS,
            **RATE_LIMITED,
            **DATABASE_UNAVAILABLE,
        },
    )
    def get(self, request, order_id: int):
        order = selectors.order_get(buyer=request.user, order_id=order_id)
        if order is None:
            raise NotFound("No such order.")
        return Response(OrderOutputSerializer(order).data)


class OrderCancelApi(generics.GenericAPIView):
    serializer_class = OrderOutputSerializer

    @extend_schema(
        operation_id="orders_cancel",
        summary="Cancel one of my orders",
        description=(
            "While the order is `placed`: gives back the stock of every line and marks the order "
            "`cancelled` in one transaction, then publishes one `order.cancelled` event. Cancelling "
            "an order that is already cancelled answers the same and changes nothing, so a retry is "
            "safe. From any other state the order cannot be cancelled (409)."
        ),
        request=None,
        parameters=[ORDER_ID, RETRY_AFTER],
        responses={
            (200, JSON): OpenApiResponse(OrderOutputSerializer, description="The order, cancelled now or before."),
            **NOT_AUTHENTICATED,
            **NOT_ONE_OF_MY_ORDERS,
            (409, PROBLEM_CONTENT_TYPE): _problem(
                "The order is in a state it cannot be cancelled from.", OrderNotCancellableProblemSerializer
            ),
            **RATE_LIMITED,
            **DATABASE_UNAVAILABLE,
        },
    )
    def post(self, request, order_id: int):
        cancelled = services.order_cancel(
            order_id=order_id, buyer=request.user, cancelled_by="buyer", correlation_id=request.request_id
        )
        return Response(OrderOutputSerializer(cancelled.order).data)
