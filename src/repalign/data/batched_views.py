"""Batched multi-view augmentation on any device (``data.augment_device: cuda`` / ``batched``).

The per-sample path (:class:`~repalign.data.views.MultiViewTransform.apply_batch`) augments every
view on the CPU, in the DataLoader workers or the main process. Here the work is split in two:

1. :func:`batch_params` (in the workers, CPU): the random parameters of every view, drawn by the
   very same :func:`~repalign.data.views.view_params` call as the per-sample path, i.e. from the
   generator seeded with ``derive_seed(seed, "view", epoch, index, view)``. The parameters of the
   two paths are therefore **identical**, for any batch composition, worker count or resume point.
   They are packed into a few small CPU tensors (view-major, ``N = K·B``, row ``k·B + b`` is view
   ``k`` of sample ``b``).
2. :class:`BatchedViews` (main process, on the device of the images): applies them to the raw
   uint8 batch ``[B, C, H, W]`` with batched tensor ops and returns ``float32 [K, B, C, S, S]``.
   Which samples take which colour op is decided from the CPU parameters, so no step of it
   waits on the device (no host synchronisation).

Pixels, op by op, compared with the per-sample CPU path on the same input (tests in
``tests/test_augment_device.py``; on CPU tensors):

- **resized crop**: ``out = Wy · img · Wxᵀ`` with per-view interpolation matrices whose
  entries are PyTorch's own antialiased-bilinear weights (taken once per crop size from
  ``torch.nn.functional.interpolate`` on unit vectors, zero outside the crop box, so edges clamp
  at the crop as ``resized_crop`` does), computed in float32 and rounded to uint8 — what
  torchvision does for uint8 images on CUDA. Before rounding it equals torchvision's float
  ``resized_crop`` within 1e-4; after rounding it differs from the CPU uint8 kernel (fixed-point,
  two passes) by at most **1 grey level**, in about 16% of the pixels. A crop of exactly
  ``S × S`` (and no crop when ``H = W = S``) is exact.
- **colour jitter** (brightness, contrast, saturation, hue in the view's random order),
  **grayscale**, **flip**, **to float + normalise**: the same arithmetic as torchvision's kernels
  with per-view factors broadcast (``addcmul`` reproduces ``add_(alpha=)``), bitwise equal on CPU.
- **Gaussian blur**: torchvision's kernel construction, one grouped ``conv2d`` for the batch;
  equal on CPU (a different summation order could move a value sitting on a .5 boundary by one
  level).

So the end-to-end difference comes only from the crop's rounding, propagated by the colour ops
(contrast shifts by a mean, hue rotates near-grey pixels): measured on 1,536 smooth 32×32 RGB
views per recipe, ``simclr_cifar`` / ``simclr_imagenet``: 84 % of the values equal, 97.5 % within
1 grey level, 99.9 % within 4, max 10–11 levels. ``MAX_LEVEL_DIFF`` (16) bounds it in the tests.
Both paths are valid augmentations with the same parameter distribution, but a run must not switch
paths midway if it is to stay bit-identical. On CUDA, float32 matmuls and convolutions here run
with TF32 off so results do not depend on the global TF32 setting.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as TF
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional._color import (  # batched-capable torchvision helpers
    _hsv_to_rgb,
    _rgb_to_grayscale_image,
    _rgb_to_hsv,
)

from repalign.data.views import MultiViewTransform, normalize_uint8

__all__ = ["batch_params", "BatchedViews", "PARAM_KEYS", "MAX_LEVEL_DIFF"]

PARAM_KEYS = ("crop", "flip", "jitter_order", "jitter_factor", "gray", "blur")
MAX_LEVEL_DIFF = 16  # tested bound on |batched − per-sample| in grey levels, whole pipeline

_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


def batch_params(transform: MultiViewTransform, indices: Sequence[int] | torch.Tensor, epoch: int,
                 height: int, width: int) -> dict[str, torch.Tensor]:
    """Random parameters of the ``K·B`` views of a batch, exactly those of the per-sample path.

    Returns CPU tensors, view-major (row ``k·B + b``):
    ``crop int64 [N, 4]`` (top, left, h, w; the whole image when the recipe does not crop),
    ``flip bool [N]``, ``jitter_order int64 [N, 4]`` (op per slot: 0 brightness, 1 contrast,
    2 saturation, 3 hue; −1 = no op), ``jitter_factor float64 [N, 4]`` (factor of op ``q`` in
    column ``q``), ``gray bool [N]``, ``blur float64 [N]`` (sigma, 0 = no blur).
    """
    idx = [int(i) for i in (indices.tolist() if torch.is_tensor(indices) else indices)]
    K, B = transform.num_views, len(idx)
    N = K * B
    crop = torch.empty(N, 4, dtype=torch.long)
    crop[:] = torch.tensor([0, 0, height, width])
    flip = torch.zeros(N, dtype=torch.bool)
    order = torch.full((N, 4), -1, dtype=torch.long)
    factor = torch.zeros(N, 4, dtype=torch.float64)
    gray = torch.zeros(N, dtype=torch.bool)
    blur = torch.zeros(N, dtype=torch.float64)
    if transform.effective_recipe != "none":
        rows_crop, rows_order, rows_fac = [], [], []
        for k in range(K):
            for b, i in enumerate(idx):
                n = k * B + b
                p = transform.params(i, epoch, k, height, width)
                if "crop" in p:
                    rows_crop.append((n, p["crop"]))
                flip[n] = bool(p["flip"])
                for slot, (q, f) in enumerate(p.get("jitter", ())):
                    rows_order.append((n, slot, q))
                    rows_fac.append((n, q, f))
                gray[n] = bool(p.get("gray", False))
                blur[n] = p.get("blur", 0.0)
        if rows_crop:
            crop[[r[0] for r in rows_crop]] = torch.tensor([r[1] for r in rows_crop])
        if rows_order:
            order[[r[0] for r in rows_order], [r[1] for r in rows_order]] = \
                torch.tensor([r[2] for r in rows_order])
            factor[[r[0] for r in rows_fac], [r[1] for r in rows_fac]] = \
                torch.tensor([r[2] for r in rows_fac], dtype=torch.float64)
    return {"crop": crop, "flip": flip, "jitter_order": order, "jitter_factor": factor,
            "gray": gray, "blur": blur}


@contextmanager
def _exact_fp32(device: torch.device) -> Iterator[None]:
    """TF32 off for matmul/conv on CUDA (restored afterwards); autocast off everywhere."""
    if device.type != "cuda":
        with torch.autocast(device.type, enabled=False):
            yield
        return
    mm, cd = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast("cuda", enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = mm, cd


def _resize_table(n: int, size: int, device: torch.device) -> torch.Tensor:
    """``T [n+1, size, n]``: ``T[h, :, :h]`` maps a length-``h`` signal to length ``size`` with
    PyTorch's antialiased bilinear weights (``align_corners=False``); zero elsewhere."""
    T = torch.zeros(n + 1, size, n, dtype=torch.float32)
    for h in range(1, n + 1):
        # unit vectors along the last dim (a width-1 image along it triggers a PyTorch bug)
        e = torch.eye(h, dtype=torch.float32).view(h, 1, 1, h)
        r = TF.interpolate(e, size=(1, size), mode="bilinear", antialias=True, align_corners=False)
        T[h, :, :h] = r[:, 0, 0, :].T
    return T.to(device)


def _crop_matrix(T: torch.Tensor, offset: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """``W [M, size, n]`` with ``W[m, s, c] = T[length_m, s, c − offset_m]`` inside the crop box
    ``[offset_m, offset_m + length_m)`` and 0 outside."""
    n = T.shape[-1]
    rel = torch.arange(n, device=T.device).view(1, -1) - offset.view(-1, 1)  # [M, n]
    inside = (rel >= 0) & (rel < length.view(-1, 1))
    Wt = T.index_select(0, length)  # [M, size, n]
    W = Wt.gather(2, rel.clamp(0, n - 1).unsqueeze(1).expand(-1, Wt.shape[1], -1))
    return W * inside.unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """torchvision ``_blend`` for uint8 ``x`` with per-image ``ratio``/``alpha = 1 − ratio``
    ``[M, 1, 1, 1]`` float32: ``x·ratio + other·alpha`` clamped and truncated to uint8."""
    return torch.addcmul(x.mul(ratio), other, alpha).clamp_(0, 255).to(torch.uint8)


def _gray_floor(x: torch.Tensor) -> torch.Tensor:
    """Luma ``float32 [M, 1, H, W]`` (floored for uint8), as torchvision's contrast/saturation."""
    if x.shape[-3] == 1:
        return x.to(torch.float32)
    return _rgb_to_grayscale_image(x, num_output_channels=1, preserve_dtype=False).floor_()


def _jitter_op(q: int, x: torch.Tensor, f: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Colour op ``q`` on uint8 ``x [M, C, H, W]`` with factors ``f`` (and ``a = 1 − f``)
    ``[M, 1, 1, 1]`` float32."""
    if q == _BRIGHTNESS:
        return x.mul(f).clamp_(0, 255).to(torch.uint8)
    if q == _CONTRAST:
        mean = _gray_floor(x).mean(dim=(-3, -2, -1), keepdim=True)
        return _blend(x, mean, f, a)
    if x.shape[-3] == 1:  # saturation and hue leave one-channel images alone (as torchvision)
        return x
    if q == _SATURATION:
        return _blend(x, _gray_floor(x), f, a)
    hsv = _rgb_to_hsv(F.to_dtype(x, torch.float32, scale=True))
    h, s, v = hsv.unbind(dim=-3)
    h = h.add(f.view(-1, 1, 1)).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    return F.to_dtype(rgb, torch.uint8, scale=True)


class BatchedViews:
    """Apply :func:`batch_params` parameters to a raw uint8 batch on its own device.

    ``BatchedViews(transform)(imgs uint8 [B, C, H, W], params) -> float32 [K, B, C, S, S]`` on
    ``imgs.device``; ``params`` from ``batch_params(transform, indices, epoch, H, W)`` (CPU
    tensors; they are read on the host, only small index/factor tensors are copied to the device).
    The result for a view depends only on its image and its parameters, never on the rest of the
    batch. The recipe, image size, channels, mean/std and view count are ``transform``'s.
    """

    def __init__(self, transform: MultiViewTransform):
        self.transform = transform
        self._tables: dict[tuple[int, int, str], torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"BatchedViews({self.transform!r})"

    def _table(self, n: int, device: torch.device) -> torch.Tensor:
        key = (n, self.transform.image_size, str(device))
        if key not in self._tables:
            self._tables[key] = _resize_table(n, self.transform.image_size, device)
        return self._tables[key]

    def crop_float(self, imgs: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        """Resized crops before rounding, float32 ``[N, C, S, S]``, from uint8
        ``imgs [B, C, H, W]`` and CPU boxes ``crop int64 [N, 4]`` (view-major, ``N = K·B``)."""
        K = crop.shape[0] // imgs.shape[0]
        H, W = imgs.shape[-2:]
        dev = imgs.device
        src = imgs.repeat(K, 1, 1, 1).to(torch.float32)  # [N, C, H, W], row k·B + b = imgs[b]
        box = crop.to(dev, non_blocking=True)
        Wy = _crop_matrix(self._table(H, dev), box[:, 0], box[:, 2])  # [N, S, H]
        Wx = _crop_matrix(self._table(W, dev), box[:, 1], box[:, 3])  # [N, S, W]
        return Wy.unsqueeze(1) @ src @ Wx.unsqueeze(1).transpose(-1, -2)

    def crop(self, imgs: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        """Resized crops rounded to uint8 ``[N, C, S, S]`` (no interpolation at all when every
        box is the whole ``S × S`` image)."""
        H, W = imgs.shape[-2:]
        S = self.transform.image_size
        if (H, W) == (S, S) and bool((crop == torch.tensor([0, 0, H, W])).all()):
            return imgs.repeat(crop.shape[0] // imgs.shape[0], 1, 1, 1)
        return self.crop_float(imgs, crop).round_().clamp_(0, 255).to(torch.uint8)

    def colour(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Colour jitter (per-view op order), grayscale and blur on uint8 ``x [N, C, S, S]``
        (modified copy returned)."""
        dev = x.device
        order, factor = params["jitter_order"], params["jitter_factor"]
        x = x.clone()
        for slot in range(order.shape[1]):
            for q in range(4):
                rows = (order[:, slot] == q).nonzero().flatten()  # CPU: no device sync
                if rows.numel() == 0:
                    continue
                f64 = factor[rows, q]
                f = f64.to(torch.float32).view(-1, 1, 1, 1).to(dev, non_blocking=True)
                a = (1.0 - f64).to(torch.float32).view(-1, 1, 1, 1).to(dev, non_blocking=True)
                r = rows.to(dev, non_blocking=True)
                x.index_copy_(0, r, _jitter_op(q, x.index_select(0, r), f, a))
        rows = params["gray"].nonzero().flatten()
        if rows.numel():
            r = rows.to(dev, non_blocking=True)
            x.index_copy_(0, r, _rgb_to_grayscale_image(x.index_select(0, r), num_output_channels=3)
                          .contiguous())
        rows = (params["blur"] > 0).nonzero().flatten()
        if rows.numel():
            k = self.transform.spec["blur"]
            r = rows.to(dev, non_blocking=True)
            x.index_copy_(0, r, self._blur(x.index_select(0, r), params["blur"][rows], k))
        return x

    @staticmethod
    def _blur(x: torch.Tensor, sigma: torch.Tensor, k: int) -> torch.Tensor:
        """torchvision ``gaussian_blur`` (``k × k``, reflect padding) with per-image sigma
        ``float64 [M]`` on uint8 ``x [M, C, H, W]``."""
        M, C, H, W = x.shape
        lim = (k - 1) / (2.0 * 2.0 ** 0.5)
        t = torch.linspace(-lim, lim, steps=k, dtype=torch.float32, device=x.device)
        s = sigma.to(torch.float32).view(-1, 1).to(x.device, non_blocking=True)
        k1 = torch.softmax(t.view(1, -1).div(s).pow(2).neg(), dim=1)  # [M, k]
        k2 = k1.unsqueeze(-1) * k1.unsqueeze(1)  # [M, k, k] (same sigma in x and y)
        weight = k2.repeat_interleave(C, dim=0).unsqueeze(1)  # [M·C, 1, k, k]
        p = k // 2
        y = TF.pad(x.to(torch.float32), [p, p, p, p], mode="reflect")
        y = TF.conv2d(y.reshape(1, M * C, H + 2 * p, W + 2 * p), weight, groups=M * C)
        return y.reshape(M, C, H, W).round_().to(torch.uint8)

    def __call__(self, imgs: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        tf = self.transform
        if imgs.dtype != torch.uint8 or imgs.ndim != 4:
            raise ValueError(f"imgs must be uint8 [B,C,H,W], got {imgs.dtype} {tuple(imgs.shape)}")
        if imgs.shape[1] != tf.channels:
            raise ValueError(f"images have {imgs.shape[1]} channels but the transform was built "
                             f"with channels={tf.channels}")
        K, B, S = tf.num_views, imgs.shape[0], tf.image_size
        if params["crop"].shape[0] != K * B:
            raise ValueError(f"params describe {params['crop'].shape[0]} views, expected "
                             f"K·B = {K}·{B}")
        with _exact_fp32(imgs.device):
            x = self.crop(imgs, params["crop"])
            x = self.colour(x, params)
            rows = params["flip"].nonzero().flatten()
            if rows.numel():
                r = rows.to(imgs.device, non_blocking=True)
                x.index_copy_(0, r, F.horizontal_flip(x.index_select(0, r)))
            out = normalize_uint8(x, tf.mean, tf.std)
        return out.view(K, B, tf.channels, S, S)
