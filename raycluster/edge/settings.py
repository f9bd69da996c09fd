"""`EdgeSettings`, the `edge:` section of the tier settings.

It is defined in `raycluster.config` (the settings root sits below the edge,
which reads it); this module keeps the name where edge code looks for it.
"""

from raycluster.config import EdgeSettings

__all__ = ("EdgeSettings",)
