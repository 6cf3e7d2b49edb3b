"""Model definitions and checkpoint loaders."""

from edgekit.models.config import SHAPES, ModelArgs
from edgekit.models.llama import Transformer
from edgekit.models.load import LoadedModel, load_model

__all__ = ["ModelArgs", "SHAPES", "Transformer", "LoadedModel", "load_model"]
