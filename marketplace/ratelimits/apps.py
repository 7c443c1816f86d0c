from django.apps import AppConfig


class RateLimitsConfig(AppConfig):
    name = "marketplace.ratelimits"
    label = "ratelimits"
    verbose_name = "Rate limits"
