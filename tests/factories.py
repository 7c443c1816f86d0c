from decimal import Decimal

import factory
from django.contrib.auth import get_user_model

from api_tokens.services import api_token_issue
from orders.models import Product, Seller


class BuyerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"buyer{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    first_name = "Test"
    last_name = factory.Sequence(lambda n: f"Buyer{n}")


class SellerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Seller

    name = factory.Sequence(lambda n: f"Seller {n}")
    email = factory.Sequence(lambda n: f"seller{n}@example.com")


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    seller = factory.SubFactory(SellerFactory)
    sku = factory.Sequence(lambda n: f"SKU-{n:05d}")
    name = factory.Sequence(lambda n: f"Product {n}")
    price = Decimal("10.00")
    stock = 10


def token_for(user) -> str:
    """An API token of ``user``: issued on the first call, the same one after. Only its digest is
    kept, so the token is remembered on this user instance."""
    if not hasattr(user, "_test_api_token"):
        user._test_api_token = api_token_issue(user=user, name="test").token
    return user._test_api_token
