from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from marketplace.problems import ProblemSerializer
from orders.models import Order

# What MoneyField renders: the schema says so, so that a client (and a fuzzer) knows "19.9" never comes.
MONEY_PATTERN = r"^-?\d+\.\d{2}$"


@extend_schema_field({"type": "string", "format": "decimal", "pattern": MONEY_PATTERN, "example": "19.90"})
class MoneyField(serializers.DecimalField):
    """An amount, always a string with two decimals ("19.90"), never a JSON number."""

    def __init__(self, *, max_digits: int = 14, **kwargs):
        super().__init__(max_digits=max_digits, decimal_places=2, coerce_to_string=True, **kwargs)


# The output serializers declare every field: a ModelSerializer derives its fields from the model
# again for every instance it is built for, which cost more CPU than the rest of the response.


class ProductOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    sku = serializers.CharField(max_length=64)
    name = serializers.CharField(max_length=200)
    seller = serializers.IntegerField(source="seller_id")
    seller_name = serializers.CharField(source="seller.name")
    price = MoneyField(max_digits=12)
    stock = serializers.IntegerField()


class JSONIntegerField(serializers.IntegerField):
    """A JSON integer (as JSON Schema defines it, so 3.0 too), never a string: DRF's IntegerField takes "3"."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


# The order limits are read from the settings when a serializer is built (get_fields), not when this
# module is imported, so they follow the settings; as a field's max_value/max_length the schema
# documents them (maximum, maxItems), so generated and Swagger examples stay within them.


class OrderLineInputSerializer(serializers.Serializer):
    product = JSONIntegerField(min_value=1)

    def get_fields(self):
        return {
            **super().get_fields(),
            "quantity": JSONIntegerField(min_value=1, max_value=settings.ORDER_MAX_QUANTITY),
        }


class OrderInputSerializer(serializers.Serializer):
    def get_fields(self):
        # A ListField, not many=True: drf-spectacular documents a ListField's min_length and
        # max_length (minItems, maxItems), a ListSerializer's not.
        return {
            **super().get_fields(),
            "lines": serializers.ListField(
                child=OrderLineInputSerializer(),
                allow_empty=False,
                min_length=1,
                max_length=settings.ORDER_MAX_LINES,
                error_messages={"max_length": f"An order has at most {settings.ORDER_MAX_LINES} lines."},
            ),
        }

    def validate_lines(self, lines):
        seen = set()
        for line in lines:
            if line["product"] in seen:
                raise serializers.ValidationError(
                    f"Product {line['product']} appears more than once; use one line with the total quantity.",
                    code="duplicate_product",
                )
            seen.add(line["product"])
        return lines


class OrderLineOutputSerializer(serializers.Serializer):
    product = serializers.IntegerField(source="product_id")
    sku = serializers.CharField(max_length=64)
    name = serializers.CharField(max_length=200)
    seller = serializers.IntegerField(source="seller_id")
    quantity = serializers.IntegerField(min_value=1)
    unit_price = MoneyField(max_digits=12)
    line_total = MoneyField()


class OrderOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    status = serializers.ChoiceField(choices=Order.Status.choices)
    lines = OrderLineOutputSerializer(many=True)
    total = MoneyField()
    currency = serializers.CharField(max_length=3)
    created_at = serializers.DateTimeField(read_only=True)


# The problem bodies of this app's own errors (orders/services.py), documented in the schema.
class InsufficientStockProblemSerializer(ProblemSerializer):
    class Shortage(serializers.Serializer):
        line = serializers.IntegerField(help_text="Index of the line in the request.")
        product = serializers.IntegerField()
        requested = serializers.IntegerField()
        available = serializers.IntegerField()

    shortages = Shortage(many=True)


class IdempotencyKeyReusedProblemSerializer(ProblemSerializer):
    order = serializers.IntegerField(help_text="The order this key already placed.")


class OrderNotCancellableProblemSerializer(ProblemSerializer):
    order_status = serializers.CharField(help_text="The state the order is in, from which it cannot be cancelled.")
