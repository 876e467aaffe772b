"""Architectures by name: the project's own (each a `backbone`, a Sequential of blocks, and a `head`), a user's
factory, and the model zoos' (timm, torchvision, Hugging Face). models.adapters knows each family's head and
blocks, so transfer learning freezes, unfreezes and re-initialises them all the same way."""

from models.registry import ARCHITECTURES, ModelError, build_model, count_parameters

__all__ = ["ARCHITECTURES", "ModelError", "build_model", "count_parameters"]
