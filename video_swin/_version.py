"""The package's version, below every other module (run folders record it)."""

__version__ = "0.1.0"
