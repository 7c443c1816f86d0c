from marketplace.events.subscriber import subscriber_task
from notifications import handlers


@subscriber_task("order_confirmation")
def send_order_confirmation(envelope):
    """Email the buyer an order confirmation."""
    return handlers.send_order_confirmation(envelope=envelope)


@subscriber_task("seller_notification")
def notify_sellers(envelope):
    """Notify every seller in the order of their own lines (email or signed webhook)."""
    return handlers.notify_sellers(envelope=envelope)
