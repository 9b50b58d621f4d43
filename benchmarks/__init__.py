"""Benchmarks of clarifai_interceptor against the alternatives: ``python -m benchmarks``."""
