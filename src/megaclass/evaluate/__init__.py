"""Evaluation: closed-set top-k and open-set 1:N (FNIR at FPIR, calibration)."""

from .closed_set import top_k_accuracy, true_ranks
from .open_set import (
                       Calibration,
                       calibrate_threshold,
                       det_curve,
                       fnir,
                       fnir_at_fpir,
                       fpir,
                       wilson_interval,
)

__all__ = ["top_k_accuracy", "true_ranks", "Calibration", "calibrate_threshold", "fnir",
           "fpir", "fnir_at_fpir", "det_curve", "wilson_interval"]
