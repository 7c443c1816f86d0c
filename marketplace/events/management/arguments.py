"""Argument types shared by the event bus's management commands."""

from argparse import ArgumentTypeError
from datetime import datetime, time

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime


def moment(text: str) -> datetime:
    """A date (its midnight) or an ISO date-time; naive ones are in the project's time zone."""
    parsed = parse_datetime(text)
    if parsed is None:
        day = parse_date(text)
        if day is None:
            raise ArgumentTypeError(f"not a date or an ISO date-time: {text!r}")
        parsed = datetime.combine(day, time.min)
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)
