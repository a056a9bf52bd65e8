"""What a target module returns (shared by every kind; see ``llc.engine.targets`` for the protocol)."""

from __future__ import annotations

from typing import Any, NamedTuple


class Built(NamedTuple):
    """A target before training: the initial parameters and the data (NumPy).

    ``x`` and ``y`` keep their own dtypes: float inputs are cast to the target's dtype, integer
    ones (tokens, class labels) stay integer end to end.
    """

    params: Any  # pytree of NumPy arrays: the start of training (or w* itself when nothing trains)
    x: Any
    y: Any
    info: dict  # JSON-serialisable facts about the target, stored in meta.json
    x_test: Any = None  # held-out data (modular: the pairs not trained on)
    y_test: Any = None


class Analytic(NamedTuple):
    """A closed-form learning coefficient and the regime in which it is the right answer."""

    value: float
    formula: str  # how it is computed
    regime: str  # what it assumes, e.g. exact at finite n, or the n -> infinity value

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "formula": self.formula, "regime": self.regime}
