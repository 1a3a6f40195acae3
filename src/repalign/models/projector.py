"""SimCLR projector and the CE head."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from repalign.errors import ConfigError


class Projector(nn.Module):
    """SimCLR projector ``Linear → BN → ReLU → Linear → BN`` (linears without bias).

    The last BN has no affine parameters (the authors' "BN, no bias"); ``norm="none"`` drops both
    BNs (used where BatchNorm statistics would break a DDP equivalence test on CPU).
    Shapes: ``h [N, in_dim] → z [N, out_dim]``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ConfigError(f"config key 'model.projector_norm': must be 'batch' or 'none', got {norm!r}")
        bn = norm == "batch"
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=not bn),
            nn.BatchNorm1d(hidden_dim) if bn else nn.Identity(),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=not bn),
            nn.BatchNorm1d(out_dim, affine=False) if bn else nn.Identity(),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class LinearHead(nn.Module):
    """CE head on the L2-normalised projection: ``logits = W·normalize(z) + b``, ``[N, d] → [N, C]``."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(F.normalize(z, dim=-1))
