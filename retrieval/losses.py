"""Training losses between predicted and target image features, ``(b, D)`` each.

- ``mse``: mean squared error (the classic regression loss);
- ``cosine``: ``1 - cos(pred, target)`` averaged;
- ``vse``: VSE++ max-violation hinge — for each caption, the hardest other image in the batch, and for
  each image the hardest other caption: ``[m - s(i, i) + s(i, j)]_+``. Scores follow the search metric
  (cosine similarity, or ``-||p - t||^2`` for l2), so training ranks the way the index searches.
  Captions of the same image in one batch are not counted as negatives of each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from extract.core.errors import UserError

KINDS = ("mse", "cosine", "vse")


def _scores(pred: torch.Tensor, target: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return F.normalize(pred, dim=1) @ F.normalize(target, dim=1).T
    return -torch.cdist(pred, target).pow(2) / pred.shape[1]


def vse_loss(pred: torch.Tensor, target: torch.Tensor, margin: float = 0.2, metric: str = "cosine",
             image_ids: torch.Tensor | None = None) -> torch.Tensor:
    """VSE++ max-violation hinge over the batch; ``image_ids (b,)`` marks rows that share an image."""
    s = _scores(pred, target, metric)
    pos = s.diag()
    if image_ids is None:
        same = torch.eye(len(s), dtype=torch.bool, device=s.device)
    else:
        same = image_ids[:, None] == image_ids[None, :]
    neg = s.masked_fill(same, float("-inf"))
    hardest_img = neg.max(dim=1).values  # per caption
    hardest_cap = neg.max(dim=0).values  # per image
    cost = F.relu(margin - pos + hardest_img) + F.relu(margin - pos + hardest_cap)
    cost = torch.where(torch.isfinite(cost), cost, torch.zeros_like(cost))  # a batch of one image has no negative
    return cost.mean()


def compute_loss(kind: str, pred: torch.Tensor, target: torch.Tensor, margin: float = 0.2, metric: str = "cosine",
                 image_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The loss ``kind`` (see :data:`KINDS`) as a scalar tensor."""
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=1)).mean()
    if kind == "vse":
        return vse_loss(pred, target, margin, metric, image_ids)
    raise UserError(f"unknown loss {kind!r}; use one of {', '.join(KINDS)}")
