"""edgerec: graph-attentive GPT-2 recommendations, trained offline and served online."""

__version__ = "0.1.0"
