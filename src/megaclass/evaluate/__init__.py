"""Evaluation: closed-set, open-set 1:N (FNIR at FPIR), verification 1:1 (TAR at FAR),
gallery-size scaling, streaming accumulators and the HTML report."""

from .classification import ClassificationReport, accuracy_by_frequency, classification_report
from .closed_set import top_k_accuracy, true_ranks
from .confusion import confusion_counts, top_confusions
from .open_set import (
    Calibration,
    calibrate_threshold,
    cmc_curve,
    det_curve,
    fnir,
    fnir_at_fpir,
    fnir_at_fpirs,
    fpir,
    rank1_miss_rate,
    wilson_interval,
)
from .streaming import IdentificationStream, ScoreHistogram, VerificationStream
from .verification import eer, fmr, fnmr, roc_curve, tar_at_far, verification_report

__all__ = ["top_k_accuracy", "true_ranks", "Calibration", "calibrate_threshold", "fnir",
           "fpir", "fnir_at_fpir", "fnir_at_fpirs", "det_curve", "wilson_interval", "cmc_curve",
           "rank1_miss_rate", "ClassificationReport", "classification_report",
           "accuracy_by_frequency", "top_confusions", "confusion_counts", "fmr", "fnmr",
           "roc_curve", "tar_at_far", "eer", "verification_report", "IdentificationStream",
           "VerificationStream", "ScoreHistogram"]
