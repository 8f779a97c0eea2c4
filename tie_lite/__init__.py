"""tie-lite: ensembles of masked diffusion language models with TIE, on one consumer GPU or a CPU."""

__version__ = "0.1.0"
