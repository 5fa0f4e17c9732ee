"""Genre heads: poster-only, text-only, early fusion (concat), late fusion (averaged logits), GMU.

Every model maps ``poster (B, Dp) float32`` and/or ``text (B, Dt) float32`` to ``(B, G)`` logits.
Inputs are standardised inside the model with training-set statistics kept as buffers, so a saved
model carries everything it needs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from retrieval.genre.kinds import MODEL_KINDS


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed per-dimension statistics (identity until :meth:`fit`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: torch.Tensor, per_dim: bool = True) -> None:
        """Per-dimension mean/std; or (``per_dim=False``, for sparse l2-normalised inputs such as tf-idf)
        no centring and one scale, the root mean square of the non-zero entries, so those become ~1."""
        if not per_dim:
            nz = x[x != 0]
            self.mean.zero_()
            self.std.fill_(float(nz.pow(2).mean().sqrt()) if nz.numel() else 1.0)
            return
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0).clamp_min(1e-6) if x.shape[0] > 1 else torch.ones_like(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def head(d_in: int, n_out: int, hidden: int, dropout: float) -> nn.Module:
    """Linear classifier when ``hidden == 0``, else Linear-ReLU-Dropout-Linear."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, n_out))
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))


class GMU(nn.Module):
    """Gated multimodal unit (Arevalo et al. 2017): ``h = z * tanh(Wp xp) + (1 - z) * tanh(Wt xt)``,
    ``z = sigmoid(Wz [xp, xt])`` per hidden dimension, then a linear classifier on ``h``."""

    def __init__(self, d_poster: int, d_text: int, n_out: int, hidden: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.poster = nn.Linear(d_poster, hidden)
        self.text = nn.Linear(d_text, hidden)
        self.gate = nn.Linear(d_poster + d_text, hidden)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, xp: torch.Tensor, xt: torch.Tensor, return_gate: bool = False):
        xp, xt = self.drop(xp), self.drop(xt)
        z = torch.sigmoid(self.gate(torch.cat([xp, xt], dim=1)))
        h = z * torch.tanh(self.poster(xp)) + (1 - z) * torch.tanh(self.text(xt))
        logits = self.out(self.drop(h))
        return (logits, z) if return_gate else logits


class GenreNet(nn.Module):
    """One of ``MODEL_KINDS`` over poster and/or text inputs; ``forward`` returns ``(B, G)`` logits.

    ``late`` also returns per-branch logits in ``branch_logits`` (training adds their losses so each
    branch is a classifier by itself, then the two are averaged). ``concat`` rescales each standardised
    block so both have the same mean squared norm on the training set: otherwise a 2048-d poster block
    drowns a tf-idf block with a dozen non-zero entries.
    """

    def __init__(self, kind: str, n_genres: int, d_poster: int = 0, d_text: int = 0, hidden: int = 256,
                 dropout: float = 0.3):
        super().__init__()
        if kind not in MODEL_KINDS:
            raise ValueError(f"unknown model {kind!r}")
        self.kind = kind
        self.uses_poster = kind != "text"
        self.uses_text = kind != "poster"
        self.norm_p = Standardize(d_poster) if self.uses_poster else None
        self.norm_t = Standardize(d_text) if self.uses_text else None
        if kind == "poster":
            self.net = head(d_poster, n_genres, hidden, dropout)
        elif kind == "text":
            self.net = head(d_text, n_genres, hidden, dropout)
        elif kind == "concat":
            self.net = head(d_poster + d_text, n_genres, hidden, dropout)
        elif kind == "late":
            self.net_p = head(d_poster, n_genres, hidden, dropout)
            self.net_t = head(d_text, n_genres, hidden, dropout)
        else:
            self.net = GMU(d_poster, d_text, n_genres, max(hidden, 16), dropout)
        self.register_buffer("balance", torch.ones(2))
        self.branch_logits: tuple[torch.Tensor, ...] = ()

    def fit_normalizers(self, poster: torch.Tensor | None, text: torch.Tensor | None, text_per_dim: bool = True) -> None:
        """Set the standardisation statistics from training inputs (see :meth:`Standardize.fit`)."""
        if self.norm_p is not None and poster is not None:
            self.norm_p.fit(poster)
        if self.norm_t is not None and text is not None:
            self.norm_t.fit(text, per_dim=text_per_dim)
        if self.kind == "concat" and poster is not None and text is not None:
            target = ((poster.shape[1] + text.shape[1]) / 2) ** 0.5
            for k, block in enumerate((self.norm_p(poster), self.norm_t(text))):
                rms = float(block.pow(2).sum(dim=1).mean().sqrt())
                self.balance[k] = target / rms if rms > 0 else 1.0

    def forward(self, poster: torch.Tensor | None = None, text: torch.Tensor | None = None) -> torch.Tensor:
        if self.uses_poster:
            if poster is None:
                raise ValueError(f"a {self.kind} model needs poster features")
            poster = self.norm_p(poster)
        if self.uses_text:
            if text is None:
                raise ValueError(f"a {self.kind} model needs text features")
            text = self.norm_t(text)
        self.branch_logits = ()
        if self.kind == "poster":
            return self.net(poster)
        if self.kind == "text":
            return self.net(text)
        if self.kind == "concat":
            return self.net(torch.cat([poster * self.balance[0], text * self.balance[1]], dim=1))
        if self.kind == "late":
            lp, lt = self.net_p(poster), self.net_t(text)
            self.branch_logits = (lp, lt)
            return (lp + lt) / 2
        return self.net(poster, text)


class EnsembleNet(nn.Module):
    """Several :class:`GenreNet` of one kind; ``forward`` gives the logit of their mean probability."""

    def __init__(self, members: list[GenreNet]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.kind = members[0].kind
        self.branch_logits: tuple[torch.Tensor, ...] = ()

    def forward(self, poster: torch.Tensor | None = None, text: torch.Tensor | None = None) -> torch.Tensor:
        p = torch.stack([torch.sigmoid(m(poster, text).float()) for m in self.members]).mean(dim=0)
        return torch.logit(p.clamp(1e-7, 1 - 1e-7))


class Batches:
    """Model inputs for row subsets as torch tensors on ``device``."""

    def __init__(self, poster, text, device):
        self.poster, self.text, self.device = poster, text, device

    def __call__(self, rows):
        p = torch.from_numpy(np.ascontiguousarray(self.poster[rows])).to(self.device) if self.poster is not None else None
        t = torch.from_numpy(np.ascontiguousarray(self.text[rows], dtype=np.float32)).to(self.device) if self.text is not None else None
        return p, t


def predict_logits(net, batches: Batches, rows: np.ndarray, batch_size: int = 1024):
    """``(len(rows), G)`` float32 torch logits from a net in eval mode."""
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            p, t = batches(rows[start : start + batch_size])
            out.append(net(p, t).float())
    return torch.cat(out) if out else torch.zeros((0, net_out_dim(net)))


def predict_proba(net, batches: Batches, rows: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """``(len(rows), G) float32`` probabilities from a trained net."""
    return torch.sigmoid(predict_logits(net, batches, rows, batch_size)).cpu().numpy()


def net_out_dim(net) -> int:
    """Number of genres a net predicts."""
    return [m for m in net.modules() if m.__class__.__name__ == "Linear"][-1].out_features
