"""The tier on Ray: shard and gateway actors, the controller, and the `Tier` handle."""

from .controller import Controller
from .gateway import GatewayActor, RayDeltaBus
from .ingester import IngesterActor
from .names import controller_name, gateway_name, ingester_name, shard_name
from .progress import StartProgress
from .shard import ShardActor
from .tier import Tier

__all__ = (
    "Controller",
    "GatewayActor",
    "IngesterActor",
    "RayDeltaBus",
    "ShardActor",
    "StartProgress",
    "Tier",
    "controller_name",
    "gateway_name",
    "ingester_name",
    "shard_name",
)
