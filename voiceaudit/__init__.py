"""voiceaudit: audit the latency of voice AI pipelines.

The public surface is small: the trace model and reader/writer. Everything else is
reached through the command line or its own module.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
