"""Bench data, run inside `manage.py shell` against the bench database (after seed_demo).

Adds catalogue products (so random 2-line orders rarely touch the same row), gives every product
plenty of stock, creates the bench buyers with API tokens, and prints one JSON line.
Reads BENCH_BUYERS and BENCH_PRODUCTS from the environment.
"""

import json
import os
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction
from rest_framework.authtoken.models import Token

from orders.models import Product, Seller

BUYERS = int(os.environ.get("BENCH_BUYERS", "32"))
EXTRA_PRODUCTS = int(os.environ.get("BENCH_PRODUCTS", "200"))
STOCK = 10_000_000

with transaction.atomic():
    sellers = list(Seller.objects.order_by("id"))
    for i in range(EXTRA_PRODUCTS):
        Product.objects.get_or_create(
            sku=f"BENCH-{i:04d}",
            defaults={
                "seller": sellers[i % len(sellers)],
                "name": f"Bench product {i}",
                "price": Decimal("5.00") + Decimal(i % 40),
                "stock": STOCK,
            },
        )
    Product.objects.update(stock=STOCK)

    User = get_user_model()
    tokens = []
    for i in range(BUYERS):
        user, created = User.objects.get_or_create(
            username=f"bench-buyer-{i:02d}",
            defaults={"email": f"bench-buyer-{i:02d}@example.com", "first_name": "Bench", "last_name": f"Buyer {i}"},
        )
        if created:
            user.set_unusable_password()
            user.save()
        tokens.append(Token.objects.get_or_create(user=user)[0].key)

hot = Product.objects.get(sku="ACME-HAMMER")
print(
    "BENCH_DATA "
    + json.dumps(
        {
            "tokens": tokens,
            "products": list(Product.objects.filter(is_active=True).values_list("id", flat=True)),
            "hot_product": hot.pk,
        }
    )
)
