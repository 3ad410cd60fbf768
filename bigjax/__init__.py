"""bigjax: a JAX/Flax research codebase for training and using large neural models."""

from bigjax.load import load

__all__ = ["load"]
