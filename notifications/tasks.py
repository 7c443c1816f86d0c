from marketplace.events.subscriber import subscriber_task
from notifications import handlers

send_order_confirmation = subscriber_task(
    handlers.ORDER_CONFIRMATION,
    {
        handlers.ORDER_PLACED: handlers.send_order_confirmation,
        handlers.ORDER_CANCELLED: handlers.send_order_cancellation,
    },
)
notify_sellers = subscriber_task(
    handlers.SELLER_NOTIFICATION,
    {
        handlers.ORDER_PLACED: handlers.notify_sellers,
        handlers.ORDER_CANCELLED: handlers.notify_sellers_of_cancellation,
    },
)
