"""The core of buscador: helpers every layer shares. It imports nothing of buscador's own.

- :mod:`extract.core.errors`: :class:`UserError`, the one exception for problems a user can fix.
- :mod:`extract.core.files`: atomic writes (:func:`atomic_path`), directory fsync, advisory file locks.
- :mod:`extract.core.hashing`: sha256 of files and of streams of rows.
- :mod:`extract.core.devices`: ``auto|cpu|cuda`` resolution (torch is imported only when called).
- :mod:`extract.core.arrays`: row normalisation.
- :mod:`extract.core.tables`: plain-text tables for reports.

It sits inside ``extract/`` because extraction is the bottom layer; ``extract``'s own package
``__init__`` is lazy, so importing the core loads nothing else.
"""
