"""The training configuration of a genre model, saved in its checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

from extract.core.errors import UserError
from retrieval.genre.kinds import MODEL_KINDS

# per-genre positive weights of the loss: 1 (none: calibrated probabilities, which a global threshold and top-k
# need), the square root of negatives/positives (sqrt), or negatives/positives (auto)
POS_WEIGHTS = ("none", "sqrt", "auto")


@dataclass(frozen=True)
class GenreConfig:
    """Everything that decides how a genre model is trained; saved in its checkpoint."""

    model: str = "concat"
    descriptor: str = "tfidf"
    descriptor_path: str | None = None
    text_cache: str | None = None
    text_field: str = "overview"
    id_column: str | None = None
    genres_column: str | None = None
    hidden: int = 256
    dropout: float = 0.3
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    pos_weight: str = "none"
    pos_weight_cap: float = 10.0
    min_support: float = 10.0
    patience: int = 10
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    folds: int = 0  # >= 2: cross-fitted ensemble of this many models over train+val (retrieval.genre.train.fit)

    def __post_init__(self):
        if self.model not in MODEL_KINDS:
            raise UserError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_KINDS)}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise UserError(f"--val-fraction {self.val_fraction} and --test-fraction {self.test_fraction} must be in [0, 1) "
                            "and leave some movies for training")
        if self.folds == 1 or self.folds < 0:
            raise UserError(f"--folds {self.folds}: use 0 (one model, early-stopped on validation) or at least 2")
        if self.pos_weight not in POS_WEIGHTS:
            try:
                float(self.pos_weight)
            except ValueError:
                raise UserError(f"--pos-weight must be {', '.join(POS_WEIGHTS)} or a number, not {self.pos_weight!r}") from None
