"""Mean and standard deviation over a split read in chunks (numpy only: the model server imports
:mod:`freestack.ml.features`, which uses it)."""

from __future__ import annotations

import numpy as np


class RunningMoments:
    """Mean and population standard deviation over chunks, merged exactly (Chan et al.), in float64:
    per column of a ``[rows, columns]`` array, or per entry left after reducing ``axes``."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, x: np.ndarray, axes: tuple[int, ...] = (0,)) -> None:
        x = np.asarray(x, dtype=np.float64)
        n = int(np.prod([x.shape[a] for a in axes])) if x.size else 0
        if n == 0:
            return
        mean = x.mean(axis=axes)
        m2 = ((x - np.expand_dims(mean, axes)) ** 2).sum(axis=axes)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def result(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std); zeros and ones of ``width`` when nothing was added."""
        if self.mean is None or self.m2 is None:
            return np.zeros(width), np.ones(width)
        return self.mean, np.sqrt(self.m2 / self.count)


__all__ = ["RunningMoments"]
