"""tie-lite: ensembles of masked diffusion language models with TIE, on one consumer GPU or a CPU."""

from . import tiny_model  # noqa: F401  (registers the tie-tiny model with transformers' Auto classes)

__version__ = "0.1.0"
