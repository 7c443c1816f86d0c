from marketplace.events.subscriber import subscriber_task
from segmentation import handlers

update_customer_segment = subscriber_task(
    handlers.CUSTOMER_SEGMENTATION,
    {
        handlers.ORDER_PLACED: handlers.update_customer_segment,
        handlers.ORDER_CANCELLED: handlers.remove_cancelled_order,
    },
)
