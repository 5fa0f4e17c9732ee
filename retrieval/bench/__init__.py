"""Benchmarks of the text side and of the whole query path: combinations, encoders, search quality, genres."""
