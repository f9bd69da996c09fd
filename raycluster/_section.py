"""`Section`: the base of every section of the tier settings (`shard:`, `redis:`, `edge:`, …).

One set of rules for every section, so a new section cannot forget one:

- an unknown key is an error naming it (a typo never silently leaves a
  default in place);
- a number must be finite (`.inf` or `.nan` is an error, for every float
  field and every float in a mapping);
- a field named `<x>_min_<unit>` may not exceed its partner `<x>_max_<unit>`
  (`reconnect_min_s` ≤ `reconnect_max_s`);
- an error never quotes the input (a section may hold a password: the
  Redis URL, a secret, a DSN), only the field and why;
- sections are frozen.

`tests/unit/test_config.py` walks every section of `TierSettings` and checks
these hold, whichever module defines the section.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ("SECTION_CONFIG", "Section", "check_min_max")

SECTION_CONFIG = ConfigDict(
    extra="forbid", frozen=True, allow_inf_nan=False, hide_input_in_errors=True
)


def check_min_max(model: BaseModel) -> None:
    """`ValueError` naming the field when a `<x>_min_<unit>` field exceeds `<x>_max_<unit>`."""
    values: dict[str, Any] = {name: getattr(model, name) for name in type(model).model_fields}
    for name, low in values.items():
        if "_min_" not in f"_{name}_":
            continue
        partner = f"_{name}_".replace("_min_", "_max_", 1).strip("_")
        high = values.get(partner)
        if low is not None and high is not None and low > high:
            raise ValueError(f"{name} ({low}) must not exceed {partner} ({high})")


class Section(BaseModel):
    """A section of the tier settings: unknown keys refused, numbers finite, min ≤ max."""

    model_config = SECTION_CONFIG

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        check_min_max(self)
        return self
