"""Stable Diffusion parts: loaded from the Hub or a folder, or a tiny random model built offline."""

from .loading import SDComponents, load_components, load_pipeline, load_tiny_components

__all__ = ["SDComponents", "load_components", "load_pipeline", "load_tiny_components"]
