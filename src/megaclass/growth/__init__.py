"""Growing a recognition system over time: update strategies for rounds of new classes,
and backward-compatible training (BCT) for model upgrades.

See :mod:`.strategies` (``enroll``, ``imprint``, ``finetune``, ``retrain``), :mod:`.state`
(what an update takes and returns) and :mod:`.bct`; ``megaclass bench growth`` measures them.
"""

from .state import GrowthState, Recipe, grow_head, imprint
from .strategies import (
    STRATEGIES,
    Enroll,
    Finetune,
    Imprint,
    Retrain,
    UpdateStrategy,
    identification,
    make_strategy,
)

__all__ = ["GrowthState", "Recipe", "grow_head", "imprint", "UpdateStrategy", "Enroll", "Imprint",
           "Finetune", "Retrain", "STRATEGIES", "make_strategy", "identification"]
