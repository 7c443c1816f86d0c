import django_filters
from django import forms
from drf_spectacular.utils import extend_schema_field

from orders.models import Product

MAX_ID = 2**63 - 1  # a bigint primary key


class StrictIntegerField(forms.IntegerField):
    """An integer written as one: digits only. Django's IntegerField takes "1.0" (and
    django-filter's NumberFilter, a decimal, takes "1.5" and filters on 1); both read an empty
    ``?seller=`` as no filter. Here either is a 400: a client that sent the parameter meant to filter."""

    def to_python(self, value):
        if value is None:
            return None
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        # Longer than any id: let the max_value check say so (int() refuses over 4,300 digits).
        if len(value.lstrip("0")) > len(str(MAX_ID)):
            return MAX_ID + 1
        return int(value)


class StrictBooleanField(forms.Field):
    """``true`` or ``false``, as OpenAPI serializes a boolean query parameter. Django's
    NullBooleanField turns anything else (``maybe``, ``""``) into "no filter", silently."""

    def to_python(self, value):
        if value is None:
            return None
        if value in ("true", "false"):
            return value == "true"
        raise forms.ValidationError('Must be "true" or "false".', code="invalid")


@extend_schema_field(
    {"type": "integer", "minimum": 1, "maximum": MAX_ID, "description": "Only this seller's products."}
)
class SellerFilter(django_filters.Filter):
    field_class = StrictIntegerField


@extend_schema_field({"type": "boolean", "description": "`true`: only products in stock; `false`: only sold-out ones."})
class InStockFilter(django_filters.Filter):
    field_class = StrictBooleanField


class ProductFilter(django_filters.FilterSet):
    seller = SellerFilter(field_name="seller_id", min_value=1, max_value=MAX_ID)
    in_stock = InStockFilter(method="filter_in_stock", label="In stock")

    class Meta:
        model = Product
        fields = ["seller", "in_stock"]

    def filter_in_stock(self, queryset, name, value):
        return queryset.filter(stock__gt=0) if value else queryset.filter(stock=0)
