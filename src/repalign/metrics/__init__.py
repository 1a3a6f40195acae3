"""Alignment metrics between representations and between weights.

Representation space (feature matrices ``X [N, d1]``, ``Y [N, d2]``, float64 accumulation, exact
feature-space forms without N×N matrices where one exists):

* :func:`linear_cka` (biased / ``debiased=True``), :func:`rbf_cka`, :class:`StreamingLinearCKA`
  (exact, chunked), :class:`MinibatchCKA` (Nguyen et al. 2021 estimator), :func:`cka_from_grams`
* :func:`rsa` (``rdm`` cosine / correlation / euclidean, ``corr`` pearson / spearman) → :class:`RSAResult`
* :func:`similarity_gap` (‖Σ_X − Σ_Y‖_F of cosine-similarity matrices), :func:`representation_angle`
* :func:`representation_metrics`: every ``align``-row representation metric in one call
* :func:`layerwise_cka`: block × block CKA matrix of two models over a loader

Weight space: :func:`weight_gap` (per-layer relative Frobenius gaps, rel-L2, angles),
:func:`weight_angle`, :func:`select_parameters`.

Degenerate inputs never give NaN: constant features / RDMs → 1.0 if both sides are constant,
0.0 if exactly one is (angles: 0° / 90°); see each module's docstring.
"""
from __future__ import annotations

from .cka import (MinibatchCKA, StreamingLinearCKA, center_gram, cka_from_grams, gram_linear, gram_rbf,
                  linear_cka, rbf_cka, unbiased_hsic)
from .layerwise import layerwise_cka, resolve_blocks
from .rsa import RSAResult, rsa
from .similarity import representation_angle, representation_metrics, similarity_gap
from .weights import select_parameters, weight_angle, weight_gap

__all__ = ["linear_cka", "rbf_cka", "cka_from_grams", "gram_linear", "gram_rbf", "center_gram", "unbiased_hsic",
           "StreamingLinearCKA", "MinibatchCKA", "rsa", "RSAResult", "similarity_gap", "representation_angle",
           "representation_metrics", "layerwise_cka", "resolve_blocks", "weight_gap", "weight_angle",
           "select_parameters"]
