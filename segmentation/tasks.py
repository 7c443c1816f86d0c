from marketplace.events.envelope import InvalidEnvelope
from marketplace.events.subscriber import subscriber_task
from segmentation import handlers

HANDLERS = {
    handlers.ORDER_PLACED: handlers.update_customer_segment,
    handlers.ORDER_CANCELLED: handlers.remove_cancelled_order,
}


@subscriber_task("customer_segmentation")
def update_customer_segment(envelope):
    """Update the buyer's order count, spend and segment: count a placed order in, a cancelled one out."""
    try:
        handler = HANDLERS[envelope["type"]]
    except KeyError:
        raise InvalidEnvelope(f"no handler for {envelope['type']!r} events") from None
    return handler(envelope=envelope)
