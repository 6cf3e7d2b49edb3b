"""Quality evaluation: perplexity over a text corpus."""

from edgekit.eval.ppl import PerplexityResult, perplexity

__all__ = ["perplexity", "PerplexityResult"]
