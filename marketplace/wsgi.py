import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from marketplace import tracing
from marketplace.checks import refuse_demo_admin

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
# Before the application loads its middleware: the Django instrumentation adds its own in front.
tracing.configure(tracing.WEB)
application = get_wsgi_application()
# The admin login is served here: a production web process refuses to start while the demo
# admin's password works (settings refused a weak key or no allowed hosts already).
if not getattr(settings, "DEVELOPING", False):
    refuse_demo_admin()
