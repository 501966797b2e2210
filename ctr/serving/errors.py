"""The error a bad serving request raises."""

from __future__ import annotations

from ctr.errors import CTRError


class ServingInputError(CTRError):
    """A request the recommender cannot answer (missing column, wrong type, bad k)."""
