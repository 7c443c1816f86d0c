"""Bench data, run in a subprocess against the bench database: ``python -m bench.seed PRODUCTS BUYERS``.

Migrates, declares the marketplace topology (``setup_broker``), then seeds: products spread over
the demo sellers with stock that never runs out, buyers with API tokens. Prints one JSON line
(tokens, buyer ids, product ids). Safe to run again.
"""

import json
import os
import sys
from decimal import Decimal

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402

from api_tokens.services import api_token_issue, api_token_revoke_all  # noqa: E402
from orders.models import Product, Seller  # noqa: E402

STOCK = 100_000_000


def main(products: int, buyers: int) -> None:
    with open(os.devnull, "w") as quiet:
        call_command("migrate", interactive=False, verbosity=0, stdout=quiet)
        call_command("setup_broker", stdout=quiet)
        call_command("seed_demo", stdout=quiet)
    with transaction.atomic():
        sellers = list(Seller.objects.order_by("id"))
        Seller.objects.update(webhook_url="")
        existing = set(Product.objects.filter(sku__startswith="BENCH-").values_list("sku", flat=True))
        Product.objects.bulk_create(
            Product(
                sku=f"BENCH-{i:05d}",
                seller=sellers[i % len(sellers)],
                name=f"Bench product {i}",
                price=Decimal("5.00") + Decimal(i % 40),
                stock=STOCK,
            )
            for i in range(products)
            if f"BENCH-{i:05d}" not in existing
        )
        Product.objects.update(stock=STOCK, is_active=True)
        User = get_user_model()
        tokens, ids = [], []
        for i in range(buyers):
            user, created = User.objects.get_or_create(
                username=f"bench-buyer-{i:03d}", defaults={"email": f"bench-buyer-{i:03d}@example.com"}
            )
            if created:
                user.set_unusable_password()
                user.save()
            # Only digests are kept: a new token each run, the previous run's revoked.
            api_token_revoke_all(user=user, name="bench")
            tokens.append(api_token_issue(user=user, name="bench").token)
            ids.append(user.pk)
    product_ids = list(
        Product.objects.filter(sku__startswith="BENCH-", sku__lt=f"BENCH-{products:05d}").values_list("id", flat=True)
    )
    print("BENCH_DATA " + json.dumps({"tokens": tokens, "buyer_ids": ids, "products": product_ids}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
