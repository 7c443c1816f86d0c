"""The marketplace API with its outbox row and publish switched off, to isolate what they cost.

Everything else (auth, idempotency, validation, the order SQL, the response) is the real code.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
application = get_wsgi_application()

from orders import services  # noqa: E402 - after Django is set up

if not hasattr(services, "enqueue_event"):
    raise RuntimeError("orders.services no longer calls enqueue_event: update bench/floor/wsgi_no_outbox.py")
services.enqueue_event = lambda envelope: None
