"""The client side: `LiveList` (a list kept by applying frames) and `Subscription`."""

from .livelist import Item, LiveList
from .subscription import Subscription, SubscriptionControl

__all__ = ("Item", "LiveList", "Subscription", "SubscriptionControl")
