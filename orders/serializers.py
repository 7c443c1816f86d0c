from django.conf import settings
from rest_framework import serializers

from orders.models import Order, OrderLine, Product


class ProductOutputSerializer(serializers.ModelSerializer):
    seller = serializers.IntegerField(source="seller_id")
    seller_name = serializers.CharField(source="seller.name")
    price = serializers.DecimalField(max_digits=12, decimal_places=2, coerce_to_string=True)

    class Meta:
        model = Product
        fields = ["id", "sku", "name", "seller", "seller_name", "price", "stock"]


class JSONIntegerField(serializers.IntegerField):
    """A JSON integer (as JSON Schema defines it, so 3.0 too), never a string: DRF's IntegerField takes "3"."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class OrderLineInputSerializer(serializers.Serializer):
    product = JSONIntegerField(min_value=1)
    quantity = JSONIntegerField(min_value=1)

    def validate_quantity(self, value):
        if value > settings.ORDER_MAX_QUANTITY:
            raise serializers.ValidationError(
                f"Ensure this value is less than or equal to {settings.ORDER_MAX_QUANTITY}.", code="max_value"
            )
        return value


class OrderInputSerializer(serializers.Serializer):
    lines = OrderLineInputSerializer(many=True, allow_empty=False)

    def validate_lines(self, lines):
        if len(lines) > settings.ORDER_MAX_LINES:
            raise serializers.ValidationError(
                f"An order has at most {settings.ORDER_MAX_LINES} lines.", code="max_length"
            )
        seen = set()
        for line in lines:
            if line["product"] in seen:
                raise serializers.ValidationError(
                    f"Product {line['product']} appears more than once; use one line with the total quantity.",
                    code="duplicate_product",
                )
            seen.add(line["product"])
        return lines


class OrderLineOutputSerializer(serializers.ModelSerializer):
    product = serializers.IntegerField(source="product_id")
    seller = serializers.IntegerField(source="seller_id")

    class Meta:
        model = OrderLine
        fields = ["product", "sku", "name", "seller", "quantity", "unit_price", "line_total"]


class OrderOutputSerializer(serializers.ModelSerializer):
    lines = OrderLineOutputSerializer(many=True)

    class Meta:
        model = Order
        fields = ["id", "status", "lines", "total", "currency", "created_at"]
