from marketplace.events.subscriber import subscriber_task
from segmentation import handlers


@subscriber_task("customer_segmentation")
def update_customer_segment(envelope):
    """Update the buyer's order count, spend and segment."""
    return handlers.update_customer_segment(envelope=envelope)
