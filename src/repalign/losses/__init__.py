"""Losses: NT-Xent, DCL (the paper's CL), NSCL, SupCon, CE, and the DCL−NSCL gap bound.

See :mod:`repalign.losses.functional` for shapes, formulas and conventions (flat layout,
empty denominators, precision) and :mod:`repalign.losses.modules` for the DDP convention.
"""
from .functional import (
    OBJECTIVES,
    AnchorLosses,
    canonical_objective,
    ce_loss,
    contrastive_loss,
    contrastive_per_anchor,
    dcl_loss,
    loss_gap_bound,
    nscl_loss,
    ntxent_loss,
    supcon_loss,
)
from .modules import ContrastiveLoss, CrossEntropyLoss

__all__ = [
    "OBJECTIVES",
    "AnchorLosses",
    "canonical_objective",
    "ce_loss",
    "contrastive_loss",
    "contrastive_per_anchor",
    "dcl_loss",
    "loss_gap_bound",
    "nscl_loss",
    "ntxent_loss",
    "supcon_loss",
    "ContrastiveLoss",
    "CrossEntropyLoss",
]
