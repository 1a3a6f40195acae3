"""Evaluation of frozen representations: kNN, linear probe, few-shot NCC, CDNV, feature extraction.

All evaluators are pure functions over features ``[N, d]`` and integer labels ``[N]``; bad input raises
``ValueError`` naming the offending argument.
"""
from .cdnv import cdnv, cdnv_matrices, directional_cdnv
from .features import FeatureCache, extract_features
from .fewshot import fewshot_ncc, ncc_predict
from .knn import knn_accuracy, knn_predict
from .probe import linear_probe

__all__ = [
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "fewshot_ncc",
    "ncc_predict",
    "cdnv",
    "directional_cdnv",
    "cdnv_matrices",
    "extract_features",
    "FeatureCache",
]
