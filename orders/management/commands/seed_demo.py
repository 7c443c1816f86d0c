from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from api_tokens.services import api_token_issue, api_token_revoke_all
from orders.models import Product, Seller

SELLERS = [
    (
        "Acme Tools",
        "sales@acme.example",
        [("ACME-HAMMER", "Claw hammer", "19.90", 100), ("ACME-WRENCH", "Adjustable wrench", "24.50", 60)],
    ),
    (
        "Bolt & Co",
        "orders@bolt.example",
        [("BOLT-M8-100", "M8 bolts, box of 100", "9.99", 500), ("BOLT-DRILL", "Cordless drill", "129.00", 15)],
    ),
    ("Canvas Goods", "hello@canvas.example", [("CANVAS-TOTE", "Canvas tote bag", "14.00", 200)]),
]
BUYERS = [("alice", "alice@example.com", "Alice", "Archer"), ("bob", "bob@example.com", "Bob", "Baker")]
# Development only: a production web process refuses to start while this password works
# (marketplace/checks.py), so production gets no demo admin.
ADMIN = ("admin", "admin@marketplace.localhost", "admin")
# Tokens are kept as digests, so each run issues the demo buyers new ones to print, revoking those
# the run before issued (by this name): a buyer's other tokens stay, and restarts pile up none.
DEMO_TOKEN_NAME = "demo (seed_demo)"  # noqa: S105 - a label, not a secret


class Command(BaseCommand):
    help = (
        "Create demo sellers, products, buyers and an admin; safe to run again. Prints a new API token "
        "for each demo buyer and revokes the one the previous run printed."
    )

    @transaction.atomic
    def handle(self, *args, **options):
        User = get_user_model()
        for name, email, products in SELLERS:
            seller, _ = Seller.objects.get_or_create(name=name, defaults={"email": email})
            for sku, title, price, stock in products:
                Product.objects.get_or_create(
                    sku=sku, defaults={"seller": seller, "name": title, "price": Decimal(price), "stock": stock}
                )
        tokens = []
        for username, email, first, last in BUYERS:
            buyer, created = User.objects.get_or_create(
                username=username, defaults={"email": email, "first_name": first, "last_name": last}
            )
            if created:
                buyer.set_unusable_password()
                buyer.save()
            api_token_revoke_all(user=buyer, name=DEMO_TOKEN_NAME)
            tokens.append((username, api_token_issue(user=buyer, name=DEMO_TOKEN_NAME).token))
        username, email, password = ADMIN
        if settings.DEVELOPING and not User.objects.filter(username=username).exists():
            User.objects.create_superuser(username=username, email=email, password=password)

        self.stdout.write(f"{Seller.objects.count()} sellers, {Product.objects.count()} products")
        if settings.DEVELOPING:
            self.stdout.write(f"admin login: {username} / {password}")
        else:
            self.stdout.write("no demo admin in production: create your own with manage.py createsuperuser")
        for username, key in tokens:
            self.stdout.write(f"buyer {username}: Authorization: Token {key}")
