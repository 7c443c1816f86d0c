from loyalty import handlers
from marketplace.events.subscriber import subscriber_task

send_reward_code = subscriber_task(handlers.LOYALTY_REWARDS, {handlers.SEGMENT_CHANGED: handlers.send_reward_code})
