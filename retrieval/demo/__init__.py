"""The demo corpus: drawn scenes with Spanish captions, and movies with posters, overviews and genres.

Deterministic for a seed, written by ``cli.py demo-data``; nothing in the production stages imports it.
"""
