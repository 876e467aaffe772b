"""Architectures by name. Every model is `backbone` (a Sequential of blocks) followed by `head` (a Linear),
so transfer learning can freeze, unfreeze and re-initialise by block and name the same way for all of them."""

from models.registry import ARCHITECTURES, ModelError, build_model, count_parameters

__all__ = ["ARCHITECTURES", "ModelError", "build_model", "count_parameters"]
