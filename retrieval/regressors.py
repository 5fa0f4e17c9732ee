"""Regressors from caption descriptors to the image feature space (torch, for training).

- :class:`MLPRegressor`: ``in -> hidden (4096) -> out``, ReLU, dropout 0.2 — a centroid/tf-idf/sentence
  vector to an image feature vector.
- :class:`GRURegressor`: a stacked GRU (2 layers) over packed word-vector sequences; the top layer's last
  hidden state, projected linearly to ``out`` when ``hidden != out``. A 2048-unit GRU is slow on a CPU,
  so ``hidden`` defaults to 512 with a projection; ``hidden=out`` gives the plain GRU with no projection.

Parameter names are fixed (``fc1``/``fc2``, ``gru``/``proj``) because :mod:`retrieval.query` runs the
same forward passes in numpy from the saved ``state_dict``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from extract.core.errors import UserError

KINDS = ("mlp", "gru")


class MLPRegressor(nn.Module):
    """``(n, in) float32 -> (n, out)``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 4096, dropout: float = 0.2):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class GRURegressor(nn.Module):
    """``(x (n, T, d) zero-padded, lengths (n,)) -> (n, out)`` through packed sequences."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.proj = nn.Linear(hidden, out_dim) if hidden != out_dim else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)  # (layers, n, hidden), already in the input order
        out = h[-1]
        return self.proj(out) if self.proj is not None else out


def make_regressor(kind: str, in_dim: int, out_dim: int, hidden: int | None = None, layers: int = 2,
                   dropout: float = 0.2) -> nn.Module:
    """A new regressor by name: ``mlp`` (hidden default 4096) or ``gru`` (hidden default 512, 2 layers)."""
    if kind == "mlp":
        return MLPRegressor(in_dim, out_dim, hidden or 4096, dropout)
    if kind == "gru":
        return GRURegressor(in_dim, out_dim, hidden or 512, layers, dropout)
    raise UserError(f"unknown regressor {kind!r}; use one of {', '.join(KINDS)}")


def regressor_config(kind: str, model: nn.Module) -> dict:
    """The shape of a regressor, as saved in checkpoints."""
    if kind == "mlp":
        return {"kind": kind, "in_dim": model.fc1.in_features, "hidden": model.fc1.out_features,
                "out_dim": model.fc2.out_features, "dropout": model.drop.p}
    return {"kind": kind, "in_dim": model.gru.input_size, "hidden": model.gru.hidden_size, "layers": model.gru.num_layers,
            "out_dim": model.proj.out_features if model.proj is not None else model.gru.hidden_size,
            "dropout": model.gru.dropout}


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The ``state_dict`` as float32 numpy arrays."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def regressor_from_numpy(config: dict, weights: dict[str, np.ndarray]) -> nn.Module:
    """Rebuild a trained regressor from its saved config and numpy weights."""
    model = make_regressor(config["kind"], config["in_dim"], config["out_dim"], config["hidden"],
                           config.get("layers", 2), config.get("dropout", 0.2))
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    return model.eval()
