"""How training data is made: images, prompts, items, and the latent cache."""

from .dataset import EpochSampler, TextualInversionDataset
from .images import ConceptImages, DataSettings
from .latent_cache import LatentCache
from .templates import TEMPLATES

__all__ = ["ConceptImages", "DataSettings", "EpochSampler", "LatentCache", "TEMPLATES",
           "TextualInversionDataset"]
