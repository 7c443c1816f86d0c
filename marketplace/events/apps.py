from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "marketplace.events"
    label = "events"
    verbose_name = "Event bus"
