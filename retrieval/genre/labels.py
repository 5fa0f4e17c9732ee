"""The movies of a label file with their multi-hot genres (:class:`LabelSet`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class LabelSet:
    """Movies with their genres. ``Y`` is ``(n, G) uint8`` multi-hot, columns in ``genres`` order.

    ``id_column`` names the column ``ids`` came from; ``alt_ids`` holds the other id-like columns (name ->
    one value per movie) that a join to feature ids may use instead.
    """

    ids: list[str]
    texts: list[str]
    posters: list[str]
    genres: list[str]
    Y: np.ndarray
    splits: list[str] | None
    source: str
    id_column: str = "id"
    alt_ids: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray | list[int]) -> LabelSet:
        """The movies at ``rows``, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            ids=[self.ids[r] for r in rows],
            texts=[self.texts[r] for r in rows],
            posters=[self.posters[r] for r in rows],
            Y=self.Y[rows],
            splits=None if self.splits is None else [self.splits[r] for r in rows],
            alt_ids={k: [v[r] for r in rows] for k, v in self.alt_ids.items()},
        )

    def with_id_column(self, name: str) -> LabelSet:
        """The same movies identified by another id column (one of ``alt_ids``)."""
        if name == self.id_column:
            return self
        alt = {k: v for k, v in self.alt_ids.items() if k != name}
        alt[self.id_column] = self.ids
        return replace(self, ids=list(self.alt_ids[name]), id_column=name, alt_ids=alt)
