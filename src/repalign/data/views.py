"""Multi-view augmentation with per-view randomness derived only from ``(seed, epoch, index, view)``.

Recipes (``MultiViewTransform(recipe=...)``), applied to uint8 images ``[C, H, W]``:

- ``"simclr_cifar"``: RandomResizedCrop(image_size, scale=(0.08, 1), ratio=(3/4, 4/3)),
  horizontal flip p=0.5, ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8 (the four ops in a random
  order, as torchvision), RandomGrayscale p=0.2.
- ``"simclr_imagenet"``: the above + GaussianBlur(kernel = odd size nearest 10% of image_size,
  at least 3, sigma ~ U(0.1, 2.0)) with p=0.5 (SimCLR, Chen et al. 2020, appendix A).
- ``"simclr_gray"``: crop + flip + ColorJitter(brightness=0.4, contrast=0.4) with p=0.8; no
  colour ops. **Chosen automatically when channels == 1** for ``simclr_cifar``; for
  ``simclr_imagenet`` with one channel the result is ``simclr_gray`` + blur
  (``effective_recipe == "simclr_gray_blur"``).
- ``"crop_flip"``: crop + flip only.
- ``"none"``: identity views (only resize to ``image_size`` if needed).

Every recipe ends with ``to_dtype(float32, scale=True)`` and ``normalize(mean, std)``.

Implementation: instead of running a ``v2.Compose`` under a reseeded global RNG (about 0.8 ms per
view), the random parameters of each view are drawn from its own
``torch.Generator`` seeded with ``derive_seed(seed, "view", epoch, index, k)`` following
torchvision's own sampling rules (``RandomResizedCrop.make_params``, ``ColorJitter``'s factor
ranges and random op order, ``GaussianBlur``'s sigma range), and applied with
``torchvision.transforms.v2.functional`` kernels. The flip, dtype conversion and normalisation
are applied to the whole batch at once (bitwise identical to per-image application). Nothing
touches the global RNG, so views do not depend on global seeding, call order, worker count, or
batch composition. Order per view: crop -> colour jitter -> grayscale -> blur -> flip -> float ->
normalise.

The batched device path (``data.augment_device: cuda``) is :mod:`repalign.data.batched_views`: it
draws the very same parameters through :func:`view_params` and applies them to a whole batch on
the GPU.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torchvision.transforms.v2 import functional as F

from repalign.seeding import derive_seed

__all__ = ["MultiViewTransform", "EvalTransform", "eval_transform", "RECIPES", "view_params"]

RECIPES = ("simclr_cifar", "simclr_imagenet", "simclr_gray", "crop_flip", "none")


def _kernel(name: str):
    """Prefer the plain-tensor kernel (``resized_crop_image``) over the dispatcher if present."""
    return getattr(F, f"{name}_image", None) or getattr(F, f"{name}_image_tensor", None) \
        or getattr(F, name)


_resized_crop = _kernel("resized_crop")
_resize = _kernel("resize")
_brightness = _kernel("adjust_brightness")
_contrast = _kernel("adjust_contrast")
_saturation = _kernel("adjust_saturation")
_hue = _kernel("adjust_hue")
_gray = getattr(F, "rgb_to_grayscale_image", None) or F.rgb_to_grayscale
_blur = _kernel("gaussian_blur")
_hflip = _kernel("horizontal_flip")

_N_UNIFORM = 64  # uniforms drawn per view (fixed, so the stream layout never changes)


def _recipe_spec(recipe: str, channels: int, image_size: int) -> dict:
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {list(RECIPES)}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    spec = dict(crop=False, flip=False, jitter=None, jitter_p=0.0, gray_p=0.0, blur=None,
                blur_p=0.0, effective=recipe)
    if recipe == "none":
        return spec
    spec.update(crop=True, flip=True)
    if recipe == "crop_flip":
        return spec
    if recipe == "simclr_gray" or channels == 1:
        spec.update(jitter=(0.4, 0.4, 0.0, 0.0), jitter_p=0.8, effective="simclr_gray")
    else:
        spec.update(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2)
    if recipe == "simclr_imagenet":
        k = max(3, int(round(0.1 * image_size)))
        k += (k % 2 == 0)
        spec.update(blur=k, blur_p=0.5)
        if spec["effective"] == "simclr_gray":
            spec["effective"] = "simclr_gray_blur"
    return spec


class _Stream:
    """Sequential reader over a fixed block of uniforms."""

    __slots__ = ("u", "i")

    def __init__(self, u: list[float]):
        self.u, self.i = u, 0

    def __call__(self) -> float:
        v = self.u[self.i]
        self.i += 1
        return v


def _crop_params(r: _Stream, height: int, width: int, scale, ratio) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.make_params`` with uniforms from ``r`` (10 attempts, then
    the central crop fallback). Returns (top, left, h, w)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * r())
        aspect = math.exp(log_lo + (log_hi - log_lo) * r())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        ui, uj = r(), r()
        if 0 < w <= width and 0 < h <= height:
            i = min(int(ui * (height - h + 1)), height - h)
            j = min(int(uj * (width - w + 1)), width - w)
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def view_params(seed: int, epoch: int, index: int, view: int, spec: dict, height: int,
                width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> dict:
    """Random parameters of view ``view`` of sample ``index`` at ``epoch`` (pure function)."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, "view", epoch, index, view))
    r = _Stream(torch.rand(_N_UNIFORM, generator=g, dtype=torch.float64).tolist())
    p: dict = {}
    # fixed stream layout: [0,40) crop, 40 flip, 41 jitter-apply, 42-45 factors, 46-49 order,
    # 50 grayscale, 51 blur-apply, 52 sigma
    if spec["crop"]:
        p["crop"] = _crop_params(r, height, width, scale, ratio)
    r.i = 40
    p["flip"] = spec["flip"] and r() < 0.5
    r.i = 41
    if spec["jitter"] is not None and r() < spec["jitter_p"]:
        b, c, s, h = spec["jitter"]
        fac = [1.0 + b * (2 * r() - 1), 1.0 + c * (2 * r() - 1), 1.0 + s * (2 * r() - 1),
               h * (2 * r() - 1)]
        fac[0], fac[1], fac[2] = max(fac[0], 0.0), max(fac[1], 0.0), max(fac[2], 0.0)
        keys = [r() for _ in range(4)]
        order = sorted(range(4), key=lambda q: keys[q])
        ops = []
        for q in order:
            if (b, c, s, h)[q] > 0:
                ops.append((q, fac[q]))
        p["jitter"] = ops
    r.i = 50
    p["gray"] = spec["gray_p"] > 0 and r() < spec["gray_p"]
    r.i = 51
    if spec["blur"] is not None and r() < spec["blur_p"]:
        p["blur"] = 0.1 + 1.9 * r()
    return p


class MultiViewTransform:
    """``K`` augmented views per image.

    Args:
        recipe: one of :data:`RECIPES` (see module docstring).
        image_size: output side (crops are resized to ``image_size``).
        channels: 1 or 3 (must match the input images).
        num_views: ``K``.
        seed: run seed; view ``k`` of sample ``i`` at epoch ``e`` uses only
            ``derive_seed(seed, "view", e, i, k)``.
        mean, std: per-channel normalisation (default 0.5 / 0.5).
        crop_scale: RandomResizedCrop scale range (default (0.08, 1.0)).

    ``__call__(img uint8 [C,H,W], index, epoch) -> float32 [K, C, image_size, image_size]``;
    ``apply_batch(imgs uint8 [B,C,H,W], indices, epoch) -> float32 [K, B, C, S, S]`` (bitwise
    equal to stacking ``__call__`` results).
    """

    def __init__(self, recipe: str, image_size: int, channels: int, num_views: int, seed: int,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 crop_scale: tuple[float, float] = (0.08, 1.0)):
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")
        self.recipe = recipe
        self.spec = _recipe_spec(recipe, channels, image_size)
        self.effective_recipe = self.spec["effective"]
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.num_views = int(num_views)
        self.seed = int(seed)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.mean, self.std = _mean_std(mean, std, channels)

    def __repr__(self) -> str:
        return (f"MultiViewTransform(recipe={self.recipe!r} -> {self.effective_recipe!r}, "
                f"image_size={self.image_size}, channels={self.channels}, "
                f"num_views={self.num_views}, seed={self.seed})")

    def params(self, index: int, epoch: int, view: int, height: int, width: int) -> dict:
        return view_params(self.seed, epoch, index, view, self.spec, height, width,
                           self.crop_scale)

    def _one(self, img: torch.Tensor, p: dict) -> torch.Tensor:
        S = self.image_size
        if "crop" in p:
            t, l, h, w = p["crop"]
            img = _resized_crop(img, t, l, h, w, [S, S], antialias=True)
        elif img.shape[-2:] != (S, S):
            img = _resize(img, [S, S], antialias=True)
        for q, f in p.get("jitter", ()):
            if q == 0:
                img = _brightness(img, f)
            elif q == 1:
                img = _contrast(img, f)
            elif q == 2:
                img = _saturation(img, f)
            else:
                img = _hue(img, f)
        if p.get("gray"):
            img = _gray(img, num_output_channels=3)
        if "blur" in p:
            k, s = self.spec["blur"], p["blur"]
            img = _blur(img, [k, k], [s, s])
        return img

    def apply_batch(self, imgs: torch.Tensor, indices: Sequence[int] | torch.Tensor,
                    epoch: int) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` -> float32 ``[K, B, C, S, S]``."""
        if imgs.dtype != torch.uint8 or imgs.ndim != 4:
            raise ValueError(f"imgs must be uint8 [B,C,H,W], got {imgs.dtype} "
                             f"{tuple(imgs.shape)}")
        if imgs.shape[1] != self.channels:
            raise ValueError(f"images have {imgs.shape[1]} channels but the transform was built "
                             f"with channels={self.channels}")
        idx = [int(i) for i in (indices.tolist() if torch.is_tensor(indices) else indices)]
        if len(idx) != imgs.shape[0]:
            raise ValueError(f"indices has {len(idx)} entries for {imgs.shape[0]} images")
        K, B, S = self.num_views, imgs.shape[0], self.image_size
        H, W = imgs.shape[-2:]
        out = torch.empty(K * B, self.channels, S, S, dtype=torch.uint8)
        flips = []
        if self.effective_recipe == "none":
            base = imgs if (H, W) == (S, S) else _resize(imgs, [S, S], antialias=True)
            out.view(K, B, self.channels, S, S).copy_(base.unsqueeze(0).expand(K, -1, -1, -1, -1))
        else:
            for k in range(K):
                for b, i in enumerate(idx):
                    p = self.params(i, epoch, k, H, W)
                    out[k * B + b] = self._one(imgs[b], p)
                    if p["flip"]:
                        flips.append(k * B + b)
        if flips:
            fi = torch.tensor(flips, dtype=torch.long)
            out[fi] = _hflip(out[fi])
        x = normalize_uint8(out, self.mean, self.std)
        return x.view(K, B, self.channels, S, S)

    def __call__(self, img: torch.Tensor, index: int, epoch: int = 0) -> torch.Tensor:
        """uint8 ``[C, H, W]`` -> float32 ``[K, C, S, S]``."""
        if img.ndim != 3:
            raise ValueError(f"img must be [C,H,W], got shape {tuple(img.shape)}")
        return self.apply_batch(img.unsqueeze(0), [index], epoch)[:, 0]


def _mean_std(mean, std, channels) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = (0.5,) * channels if mean is None else tuple(float(m) for m in mean)
    std = (0.5,) * channels if std is None else tuple(float(s) for s in std)
    if len(mean) == 1 and channels > 1:
        mean = mean * channels
    if len(std) == 1 and channels > 1:
        std = std * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std must have {channels} entries, got {mean} / {std}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    return mean, std


def normalize_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images ``[..., C, H, W]`` → float32 ``(x/255 − mean)/std`` per channel (torchvision ops)."""
    x = F.to_dtype(x, torch.float32, scale=True)
    return F.normalize(x, list(mean), list(std))


class EvalTransform:
    """Deterministic evaluation transform: resize to ``image_size`` (antialiased) if needed,
    ``to_dtype(float32, scale=True)``, ``normalize(mean, std)``.

    ``__call__(img uint8 [C,H,W] or [B,C,H,W]) -> float32`` of the same rank. Extra positional
    arguments (index, epoch) are accepted and ignored.
    """

    def __init__(self, image_size: int, channels: int, mean=None, std=None):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.image_size, self.channels = int(image_size), int(channels)
        self.mean, self.std = _mean_std(mean, std, channels)

    def __call__(self, img: torch.Tensor, *unused) -> torch.Tensor:
        if img.dtype != torch.uint8 or img.ndim not in (3, 4):
            raise ValueError(f"img must be uint8 [C,H,W] or [B,C,H,W], got {img.dtype} "
                             f"{tuple(img.shape)}")
        if img.shape[-3] != self.channels:
            raise ValueError(f"image has {img.shape[-3]} channels, transform expects "
                             f"channels={self.channels}")
        S = self.image_size
        if img.shape[-2:] != (S, S):
            img = _resize(img, [S, S], antialias=True)
        return normalize_uint8(img, self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size}, channels={self.channels})"


def eval_transform(image_size: int, channels: int, mean=None, std=None) -> EvalTransform:
    """Deterministic :class:`EvalTransform` (float conversion + normalisation, resize if needed)."""
    return EvalTransform(image_size, channels, mean, std)
