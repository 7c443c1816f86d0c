from loyalty import handlers
from marketplace.events.envelope import InvalidEnvelope
from marketplace.events.subscriber import subscriber_task

HANDLERS = {
    handlers.SEGMENT_CHANGED: handlers.send_reward_code,
}


@subscriber_task("loyalty_rewards")
def send_reward_code(envelope):
    """Email the buyer a one-time reward code when their segment becomes loyal or high value."""
    try:
        handler = HANDLERS[envelope["type"]]
    except KeyError:
        raise InvalidEnvelope(f"no handler for {envelope['type']!r} events") from None
    return handler(envelope=envelope)
