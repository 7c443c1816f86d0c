import django_filters

from orders.models import Product


class ProductFilter(django_filters.FilterSet):
    seller = django_filters.NumberFilter(field_name="seller_id")
    in_stock = django_filters.BooleanFilter(method="filter_in_stock", label="In stock")

    class Meta:
        model = Product
        fields = ["seller", "in_stock"]

    def filter_in_stock(self, queryset, name, value):
        return queryset.filter(stock__gt=0) if value else queryset.filter(stock=0)
