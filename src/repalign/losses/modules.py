"""``nn.Module`` wrappers around :mod:`repalign.losses.functional` (with cross-rank gathering).

DDP convention (``ContrastiveLoss`` with ``gather_distributed=True`` under an initialised process
group with world size W > 1):

* every rank passes ``z [K, B_local, d]`` and ``labels [B_local]`` with the **same** ``B_local``
  (checked; a mismatch raises ``ValueError`` on every rank);
* ``z`` is all-gathered with gradients (``torch.distributed.nn.functional.all_gather``) and the
  labels without, in rank order along the B axis: the global batch is
  ``cat([z_0, …, z_{W-1}], dim=1)``, ``B = W · B_local``;
* rank r computes the per-anchor losses of its local anchors (samples ``r·B_local … (r+1)·B_local − 1``)
  against all ``K·B`` global views and returns
  ``L_r = W · Σ_{local anchors} ℓ_a / N_valid`` where ``N_valid`` is the number of valid anchors of
  the **global** batch (computed identically on every rank from the gathered labels, so no extra
  collective is needed).

Hence ``mean_r L_r`` equals the single-process loss on the global batch, and with DDP gradient
averaging (all_gather backward sums ``∂L_r/∂z_local`` over r, DDP then divides by W) parameter
gradients equal the single-process gradients. Equivalently: for a leaf ``z_local``,
``z_local.grad / W`` equals the single-process ``∂L/∂z`` restricted to the local slice.
Without DDP (or ``gather_distributed=False``) the module returns the plain functional loss of the
local batch.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import distributed as rdist
from .functional import (
    _check_alpha,
    _check_temperature,
    _mean_over_valid,
    canonical_objective,
    ce_loss,
    contrastive_per_anchor,
)

__all__ = ["ContrastiveLoss", "CrossEntropyLoss"]


class ContrastiveLoss(nn.Module):
    """Contrastive loss module: ``forward(z [K, B_local, d], labels [B_local] | None) -> scalar``.

    Args:
        objective: "ntxent", "cl"/"dcl", "nscl", "nscl_alpha" or "scl"/"supcon".
        temperature: τ > 0.
        include_positive: keep the positive in the denominator (affects "dcl"/"nscl" only).
        gather_distributed: under ``torch.distributed`` with world size > 1, use the negatives of
            all ranks (see the module docstring for the exact loss scaling).
    """

    def __init__(
        self,
        objective: str,
        temperature: float,
        include_positive: bool = False,
        gather_distributed: bool = True,
        alpha: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.objective = canonical_objective(objective)
        self.temperature = _check_temperature(temperature)
        if (self.objective == "nscl_alpha") != (alpha is not None):
            raise ValueError("alpha is required for objective 'nscl_alpha' and applies to it only, got "
                             f"objective {objective!r}, alpha {alpha!r}")
        self.alpha = None if alpha is None else _check_alpha(alpha)
        if not isinstance(include_positive, bool):
            raise ValueError(f"include_positive must be a bool, got {include_positive!r}")
        if not isinstance(gather_distributed, bool):
            raise ValueError(f"gather_distributed must be a bool, got {gather_distributed!r}")
        self.include_positive = include_positive
        self.gather_distributed = gather_distributed

    def extra_repr(self) -> str:
        return (
            f"objective={self.objective!r}, temperature={self.temperature}, "
            f"include_positive={self.include_positive}, gather_distributed={self.gather_distributed}"
            + (f", alpha={self.alpha}" if self.alpha is not None else "")
        )

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        world = rdist.world_size() if self.gather_distributed else 1
        if world == 1:
            return _mean_over_valid(contrastive_per_anchor(
                self.objective, z, labels, self.temperature, include_positive=self.include_positive, alpha=self.alpha
            ))
        if not isinstance(z, torch.Tensor) or z.dim() != 3:
            raise ValueError(
                f"z must be a tensor of shape [K, B_local, d], got "
                f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}"
            )
        if labels is not None and not isinstance(labels, torch.Tensor):
            raise ValueError(f"labels must be a torch.Tensor of shape [B_local] or None, got {type(labels).__name__}")
        # agree on shapes before gathering, so a mismatch fails on every rank instead of hanging
        K, B_local, d = z.shape
        meta = torch.tensor(
            [K, B_local, d, -1 if labels is None else labels.numel()], dtype=torch.long, device=z.device
        )
        metas = rdist.gather_no_grad(meta[None, :], dim=0)  # [W, 4]
        if not bool((metas == metas[0]).all()):
            raise ValueError(
                "ContrastiveLoss under torch.distributed needs identical z shapes [K, B_local, d] and "
                f"label counts on every rank; got (K, B_local, d, n_labels) per rank = {metas.tolist()}"
            )
        z_global = rdist.gather_with_grad(z, dim=1)  # [K, W*B_local, d]
        labels_global = None if labels is None else rdist.gather_no_grad(labels.reshape(-1), dim=0)
        r = rdist.rank()
        res = contrastive_per_anchor(
            self.objective,
            z_global,
            labels_global,
            self.temperature,
            include_positive=self.include_positive,
            anchor_range=(r * B_local, (r + 1) * B_local),
            alpha=self.alpha,
        )
        return res.losses.sum() * world / res.num_valid.clamp_min(1).to(res.losses.dtype)


class CrossEntropyLoss(nn.Module):
    """Cross-entropy over views: ``forward(logits [K, B, C], labels [B]) -> scalar`` (see ``ce_loss``).

    Nothing is gathered under DDP: with equal local batch sizes the mean over ranks of the local
    means is the global mean, and DDP's gradient averaging then gives the global gradient.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ce_loss(logits, labels)
