"""Extraction benchmark: the full pipeline against the bare forward, in the same run."""
