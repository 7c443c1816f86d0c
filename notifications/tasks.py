from marketplace.events.envelope import InvalidEnvelope
from marketplace.events.subscriber import subscriber_task
from notifications import handlers

BUYER_HANDLERS = {
    handlers.ORDER_PLACED: handlers.send_order_confirmation,
    handlers.ORDER_CANCELLED: handlers.send_order_cancellation,
}
SELLER_HANDLERS = {
    handlers.ORDER_PLACED: handlers.notify_sellers,
    handlers.ORDER_CANCELLED: handlers.notify_sellers_of_cancellation,
}


def _handler(by_type, envelope):
    try:
        return by_type[envelope["type"]]
    except KeyError:
        raise InvalidEnvelope(f"no handler for {envelope['type']!r} events") from None


@subscriber_task("order_confirmation")
def send_order_confirmation(envelope):
    """Email the buyer: their order's confirmation (order.placed) or its cancellation (order.cancelled)."""
    return _handler(BUYER_HANDLERS, envelope)(envelope=envelope)


@subscriber_task("seller_notification")
def notify_sellers(envelope):
    """Notify every seller in the order of their own lines (email or signed webhook): the new
    order (order.placed) or its cancellation (order.cancelled)."""
    return _handler(SELLER_HANDLERS, envelope)(envelope=envelope)
