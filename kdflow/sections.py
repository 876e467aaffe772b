"""The base of every params section: unknown keys refused, values not coerced, sections immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Strict: `epochs: true` is not 1 and `lr: "0.1"` is not a number; a float field still takes an int (`lr: 1`).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
