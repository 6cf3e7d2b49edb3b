"""edgekit: profile -> plan -> quantize -> export -> verify -> bench for small language models."""

__version__ = "0.1.0"
