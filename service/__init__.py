"""ttc-router's gateway: OpenAI-compatible HTTP in, strategies against backends, HTTP out."""

__version__ = "0.1.0"
