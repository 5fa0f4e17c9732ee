"""Text side and evaluation: tokenize captions, describe them, regress them into the image space, score retrieval."""
