"""Helpers shared by op declarations: broadcasting, dimension arithmetic, type checks."""
from __future__ import annotations

from typing import Optional

from ....errors import OpError
from ...types import TensorType


def broadcast_shapes(a: tuple, b: tuple, where: str = "") -> tuple:
    """numpy broadcasting of two shapes (None = dynamic dimension)."""
    out = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da == 1:
            out.append(db)
        elif db == 1 or da == db:
            out.append(da)
        elif da is None or db is None:
            out.append(da if db is None else db)
        else:
            raise OpError(f"{where}: shapes {a} and {b} do not broadcast")
    return tuple(reversed(out))


def require(t: Optional[TensorType], what: str) -> TensorType:
    if t is None:
        raise OpError(f"missing input {what}")
    return t


def require_rank(t: TensorType, rank: int, what: str) -> None:
    if t.rank != rank:
        raise OpError(f"{what} must have rank {rank}, got shape {t.shape}")
