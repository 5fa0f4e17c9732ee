"""Training configuration for text -> image-space regressors (a frozen dataclass saved in every checkpoint)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from extract.core.errors import UserError

TARGET_NORMS = ("l2", "standardise", "none")
OPTIMISERS = ("sgd", "adam")


def metric_for(target_norm: str) -> str:
    """Search metric that matches a target normalisation: cosine for l2-normalised targets, else l2."""
    if target_norm not in TARGET_NORMS:
        raise UserError(f"unknown target normalisation {target_norm!r}; use one of {', '.join(TARGET_NORMS)}")
    return "cosine" if target_norm == "l2" else "l2"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a text encoder is trained.

    ``hidden`` is the MLP hidden width (default 4096) or the GRU hidden size (default 512, projected
    linearly to the feature dimension); ``patience`` stops training after that many epochs without a
    better validation MRR.
    """

    descriptor: str = "centroid"
    regressor: str = "mlp"
    loss: str = "vse"
    margin: float = 0.2
    target_norm: str = "l2"
    optimiser: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 30
    patience: int = 5
    hidden: int | None = None
    layers: int = 2
    dropout: float = 0.2
    max_len: int = 32
    fold_accents: bool = False
    tfidf_ngrams: int = 3
    tfidf_max_features: int = 20000
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        metric_for(self.target_norm)
        if self.optimiser not in OPTIMISERS:
            raise UserError(f"unknown optimiser {self.optimiser!r}; use one of {', '.join(OPTIMISERS)}")
        for name in ("batch_size", "epochs", "patience", "layers", "max_len"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.regressor == "gru" and self.descriptor != "sequence":
            raise UserError(f"the gru regressor reads word sequences: use --descriptor sequence, not {self.descriptor!r}")
        if self.regressor == "mlp" and self.descriptor == "sequence":
            raise UserError("the sequence descriptor feeds the gru regressor: use --regressor gru")

    @property
    def metric(self) -> str:
        return metric_for(self.target_norm)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def with_(self, **changes) -> TrainConfig:
        return replace(self, **changes)
