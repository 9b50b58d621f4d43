"""The package's version (its own module: the instrumentation reads it without a cycle)."""

__version__ = "0.1.0"
