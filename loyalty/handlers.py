"""Loyalty rewards: a one-time reward code for a buyer whose segment became loyal or high value.

customer.segment_changed (published by customer segmentation) into a rewarded segment gets the
buyer one RewardCode for that segment, emailed to them once. Into any other segment (new,
returning): nothing. A buyer who reaches a segment again (a cancellation took them out of it, a
later order brought them back) already has its code and gets nothing more.

Exactly-once effect, as for the order confirmation (docs/architecture.md, "Exactly-once effects"):
in one transaction the event's ProcessedEvent marker and the RewardCode row are inserted, the
email is sent, and only then does the transaction commit. A failed send rolls both back so a retry
sends again; a duplicate delivery finds the committed marker, and a second event into the same
segment finds the committed (buyer, segment) row: neither sends anything. The one window left —
the mail server accepted the email, then our commit failed — sends the email again on the retry:
the code is derived from the event id (see reward_code), so that duplicate carries the same code,
the one that is stored.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from django.core.mail import EmailMessage
from django.db import transaction
from django.utils.crypto import salted_hmac

from loyalty.models import RewardCode
from marketplace.events.subscriber import claim_event, insert_once
from marketplace.mail import mail_server, send_email

logger = logging.getLogger(__name__)

LOYALTY_REWARDS = "loyalty_rewards"
# The event type this handler understands (the contract: schemas/customer.segment_changed.v1.json).
SEGMENT_CHANGED = "customer.segment_changed"
# Codes tried per event before giving up: a second one is needed only if the first collided.
CODE_ATTEMPTS = 5


class RewardCodeCollision(Exception):
    """Every code derived for an event was taken by other buyers: a bug, not worth retrying."""


def send_reward_code(*, envelope: dict[str, Any]) -> bool:
    """Give the buyer their reward code for the segment they moved into, by email, once.

    Returns True if a code was created (and emailed) now; False for a duplicate delivery, a segment
    that is not rewarded, or a buyer who already has this segment's code.
    """
    change = envelope["data"]
    buyer, segment = change["buyer"], change["segment"]
    with transaction.atomic():
        if not claim_event(subscriber=LOYALTY_REWARDS, event_id=envelope["id"]):
            return False
        if segment not in RewardCode.Segment.values:
            logger.info("buyer %s moved to %s: not a rewarded segment", buyer["id"], segment)
            return False
        reward = _create_reward_once(buyer_id=buyer["id"], segment=segment, event_id=envelope["id"])
        if reward is None:
            logger.info("buyer %s moved to %s again: they have its reward code already", buyer["id"], segment)
            return False
        if not buyer["email"]:
            # The contract allows an account without an email: the code is kept for the team to hand over.
            logger.warning("buyer %s has no email address: reward code %s stored, not sent", buyer["id"], reward.code)
            return True
        send_email(
            EmailMessage(
                subject=_SUBJECTS[segment],
                body=_reward_email_body(change, reward),
                to=[buyer["email"]],
                headers={"X-Marketplace-Event-Id": envelope["id"]},
            ),
            failure=f"{segment} reward code for buyer {buyer['id']} to {buyer['email']} via {mail_server()}",
        )
    logger.info("buyer %s: %s reward code emailed to %s", buyer["id"], segment, buyer["email"])
    return True


def reward_code(*, event_id: str, attempt: int = 0) -> str:
    """``XXXXX-XXXXX-XXXXX`` (75 bits): unpredictable without SECRET_KEY, and the same on every
    retry of the event, so an email sent twice (the window above) carries the stored code."""
    digest = salted_hmac("loyalty.reward_code", f"{event_id}:{attempt}").digest()
    letters = base64.b32encode(digest).decode()[:15]
    return "-".join(letters[i : i + 5] for i in range(0, 15, 5))


def _create_reward_once(*, buyer_id: int, segment: str, event_id: str) -> RewardCode | None:
    """Within the caller's transaction, the buyer's new code for ``segment``; None if they have one.

    A concurrent event into the same segment waits on the (buyer, segment) unique index until the
    first transaction commits (then finds its row) or rolls back (then takes over).
    """
    for attempt in range(CODE_ATTEMPTS):
        reward = RewardCode(
            buyer_id=buyer_id, segment=segment, code=reward_code(event_id=event_id, attempt=attempt), event_id=event_id
        )
        if insert_once(reward):
            return reward
        # Nothing inserted: either the buyer has this segment's code, or the code is another buyer's.
        if RewardCode.objects.filter(buyer_id=buyer_id, segment=segment).exists():
            return None
    raise RewardCodeCollision(f"event {event_id}: {CODE_ATTEMPTS} reward codes in a row were taken")


_SUBJECTS = {
    RewardCode.Segment.LOYAL: "Thank you for your loyalty: a reward for you",
    RewardCode.Segment.HIGH_VALUE: "Thank you for shopping with us: a reward for you",
}


def _reward_email_body(change: dict[str, Any], reward: RewardCode) -> str:
    profile = change["profile"]
    if reward.segment == RewardCode.Segment.LOYAL:
        why = f"You have placed {profile['order_count']} orders with us, which makes you one of our loyal customers."
    else:
        why = f"You have spent {profile['lifetime_spend']} with us, which makes you one of our best customers."
    return f"Hello {change['buyer']['name']},\n\n{why}\n\nYour one-time reward code: {reward.code}\n\nThank you!\n"
