"""Names of the genre model kinds (no torch import, so options and configs can check them cheaply)."""

MODEL_KINDS = ("poster", "text", "concat", "late", "gmu")
