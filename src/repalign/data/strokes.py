"""``strokes``: a seeded procedural image source with any number of classes.

Class ``c`` is a *template* of ``2..5`` quadratic Bézier strokes (control points in the
normalised square ``[-1, 1]^2``, half-widths ``0.05..0.10`` of the half-image); the template
depends only on ``(seed, c)`` via ``generator(seed, "strokes", "template", c)`` (plus a shared
base shape from ``generator(seed, "strokes", "base")``), so the first 20 classes of a
100-class source are exactly the classes of the 20-class source.

``between_class = b`` in ``[0, 1]`` sets how much templates share the base shape:
``P_c = (1 - b) R_c + b B`` for control points and half-widths (``b = 1``: classes differ only in
their stroke count). ``within_class = w`` in ``[0, 1]`` scales the per-sample variation:
rotation ``N(0, (0.35 w)^2)`` rad, log-scale ``N(0, (0.12 w)^2)``, translation
``N(0, (0.12 w)^2)`` per axis, control-point noise ``N(0, (0.10 w)^2)``, log half-width
``N(0, (0.25 w)^2)``, additive pixel noise ``N(0, (0.10 w)^2)`` on the ``[0, 1]`` intensity.

Sample ``i`` of class ``c`` in split ``split`` uses only ``generator(seed, "strokes", split, c, i)``.

Rendering (vectorised over samples): each stroke is evaluated at 7 points (6 segments);
``d(p) = min_segments (dist(p, segment) - halfwidth)`` on the pixel-centre grid and the
intensity is ``clamp(0.5 - d / pixel, 0, 1)`` (one pixel of anti-aliasing). Only
correctly-rounded elementwise ops (+ - * / sqrt, clamp, min) run on batched tensors; the
transcendental per-sample parameters (cos, sin, exp) are computed in Python ``math``, so a sample's
pixels do not depend on which other samples are rendered with it. ``channels=3`` tints each class
with a colour from its template generator.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Sequence

import torch

from repalign.data.sources import ImageSource, SourceInfo, register_source
from repalign.errors import ConfigError
from repalign.seeding import derive_seed, generator

__all__ = ["StrokeTemplates", "make_templates", "render_strokes", "generate_strokes",
           "MAX_STROKES", "POINTS_PER_STROKE"]

MAX_STROKES = 5
POINTS_PER_STROKE = 7
_N_PARAM = 8  # per-sample scalar normals: angle, log-scale, tx, ty, log-width, 3 spare
_N_CTRL = MAX_STROKES * 3 * 2


class StrokeTemplates:
    """Templates of a list of classes: ``ctrl [C, S, 3, 2]``, ``width [C, S]`` (inactive strokes
    have width ``-inf``), ``tint [C, 3]``."""

    def __init__(self, classes: Sequence[int], ctrl: torch.Tensor, width: torch.Tensor,
                 tint: torch.Tensor, active: torch.Tensor):
        self.classes, self.ctrl, self.width, self.tint, self.active = (
            list(classes), ctrl, width, tint, active)


def _knob_problem(name: str, v: object) -> str | None:
    """What is wrong with the value ``v`` of the strokes knob ``name`` (``None``: nothing)."""
    num = isinstance(v, (int, float)) and not isinstance(v, bool)
    whole = isinstance(v, int) and not isinstance(v, bool)
    if name in ("within_class", "between_class"):
        return None if num and 0.0 <= v <= 1.0 else f"{name} must lie in [0, 1], got {v!r}"
    if name == "channels":
        return None if whole and v in (1, 3) else f"channels must be 1 or 3, got {v!r}"
    if name == "image_size":
        return None if whole and v >= 4 else f"image_size must be >= 4, got {v!r}"
    return None if whole and v >= 0 else f"{name} must be >= 0, got {v!r}"  # samples_per_class, test_per_class


def _check_knobs(key_prefix: str | None = None, **knobs: object) -> None:
    """Stop on the first bad knob: a ``ValueError`` for library callers; with ``key_prefix`` (the
    source built from a config's ``data.options``) a :class:`ConfigError` naming ``<prefix><knob>``."""
    for name, v in knobs.items():
        msg = _knob_problem(name, v)
        if msg:
            raise ConfigError(f"config key '{key_prefix}{name}': {msg}") if key_prefix else ValueError(msg)


def make_templates(classes: Sequence[int], seed: int, between_class: float = 0.25
                   ) -> StrokeTemplates:
    """Templates of the given original class indices (each depends only on ``(seed, c)``)."""
    _check_knobs(between_class=between_class)
    gb = generator(seed, "strokes", "base")
    base_ctrl = torch.rand(MAX_STROKES, 3, 2, generator=gb, dtype=torch.float64) * 1.5 - 0.75
    base_w = torch.rand(MAX_STROKES, generator=gb, dtype=torch.float64) * 0.05 + 0.05
    b = float(between_class)
    C = len(classes)
    ctrl = torch.empty(C, MAX_STROKES, 3, 2, dtype=torch.float64)
    width = torch.empty(C, MAX_STROKES, dtype=torch.float64)
    tint = torch.empty(C, 3, dtype=torch.float64)
    active = torch.zeros(C, MAX_STROKES, dtype=torch.bool)
    for j, c in enumerate(classes):
        g = generator(seed, "strokes", "template", int(c))
        u = torch.rand(1 + _N_CTRL + MAX_STROKES + 3, generator=g, dtype=torch.float64)
        n = 2 + min(int(u[0] * 4), 3)  # 2..5 strokes
        ctrl[j] = (1 - b) * (u[1:1 + _N_CTRL].view(MAX_STROKES, 3, 2) * 1.5 - 0.75) + b * base_ctrl
        o = 1 + _N_CTRL
        width[j] = (1 - b) * (u[o:o + MAX_STROKES] * 0.05 + 0.05) + b * base_w
        tint[j] = u[o + MAX_STROKES:] * 0.6 + 0.4
        active[j, :n] = True
    return StrokeTemplates(classes, ctrl.float(), width.float(), tint.float(), active)


def _bezier_basis() -> torch.Tensor:
    t = torch.linspace(0.0, 1.0, POINTS_PER_STROKE, dtype=torch.float64)
    return torch.stack([(1 - t) ** 2, 2 * (1 - t) * t, t ** 2]).float()  # [3, T]


@contextmanager
def _num_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (restored afterwards)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def render_strokes(ctrl: torch.Tensor, width: torch.Tensor, image_size: int,
                   chunk: int = 16, threads: int | None = 1) -> torch.Tensor:
    """Render strokes to intensities.

    Args:
        ctrl: float32 ``[N, S, 3, 2]`` control points (x, y) in ``[-1, 1]`` coordinates
            (x to the right, y downwards).
        width: float32 ``[N, S]`` stroke half-widths in the same units (``-inf``: not drawn).
        image_size: output side ``H = W``.
        chunk: samples per vectorised step (16 keeps the ``[chunk, segments, H*W]`` temporaries
            in cache).
        threads: torch intra-op threads while rendering (default 1: the many small
            cache-resident ops are fastest single-threaded and do not stall when cores are
            oversubscribed; ``None`` keeps the current setting). Results do not depend on it.
    Returns:
        float32 ``[N, H, W]`` in ``[0, 1]``: ``clamp(0.5 - d/px, 0, 1)`` with
        ``d = min_seg(|p - seg| - width)`` and ``px = 2 / image_size``.
    """
    N, S = ctrl.shape[:2]
    basis = _bezier_basis()  # [3, T]
    # points [N, S, T, 2] = sum_k basis[k, t] * ctrl[:, :, k]
    pts = (basis[0].view(1, 1, -1, 1) * ctrl[:, :, 0:1, :]
           + basis[1].view(1, 1, -1, 1) * ctrl[:, :, 1:2, :]
           + basis[2].view(1, 1, -1, 1) * ctrl[:, :, 2:3, :])
    a = pts[:, :, :-1, :]
    v = pts[:, :, 1:, :] - a
    M = S * (POINTS_PER_STROKE - 1)
    ax, ay = a[..., 0].reshape(N, M, 1), a[..., 1].reshape(N, M, 1)
    vx, vy = v[..., 0].reshape(N, M, 1), v[..., 1].reshape(N, M, 1)
    inv = 1.0 / (vx * vx + vy * vy).clamp_min(1e-12)
    w = width.unsqueeze(-1).expand(N, S, POINTS_PER_STROKE - 1).reshape(N, M, 1)
    px = 2.0 / image_size
    coords = (torch.arange(image_size, dtype=torch.float32) + 0.5) * px - 1.0
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    gx, gy = gx.reshape(1, 1, -1), gy.reshape(1, 1, -1)
    with _num_threads(threads):
        return _render(N, S, ax, ay, vx, vy, inv, w, width, gx, gy, px, image_size, chunk)


def _render(N, S, ax, ay, vx, vy, inv, w, width, gx, gy, px, image_size, chunk):
    out = torch.empty(N, image_size * image_size)
    # number of leading segments that can be drawn, per chunk (trailing strokes with width -inf
    # contribute +inf distances and are skipped; the min is unchanged)
    drawn = torch.isfinite(width)
    last = torch.where(drawn, torch.arange(1, S + 1).expand(N, S), torch.zeros(N, S,
                                                                             dtype=torch.long))
    last = last.amax(dim=1) if S else torch.zeros(N, dtype=torch.long)
    seg_per = POINTS_PER_STROKE - 1
    for s in range(0, N, chunk):
        m = max(int(last[s:s + chunk].max()), 1) * seg_per
        e = (slice(s, s + chunk), slice(0, m))
        wx = gx - ax[e]
        wy = gy - ay[e]
        t = (wx * vx[e]).add_(wy * vy[e]).mul_(inv[e]).clamp_(0.0, 1.0)
        wx.sub_(t * vx[e])
        wy.sub_(t.mul_(vy[e]))
        d = wx.mul_(wx).add_(wy.mul_(wy)).sqrt_().sub_(w[e])
        out[s:s + chunk] = d.amin(dim=1)
    out = out.div_(-px).add_(0.5).clamp_(0.0, 1.0)
    return out.view(N, image_size, image_size)


def _sample_params(seed: int, split: str, classes: Sequence[int], counts: Sequence[int],
                   within_class: float, image_size: int):
    """Per-sample affine parameters, control noise [N,S,3,2], width factors, pixel noise."""
    w = float(within_class)
    P = image_size * image_size
    rows, noise = [], []
    ctrl_noise = []
    g = torch.Generator()
    for c, n in zip(classes, counts):
        for i in range(n):
            g.manual_seed(derive_seed(seed, "strokes", split, int(c), i))
            z = torch.randn(_N_PARAM + _N_CTRL + P, generator=g)
            p = z[:_N_PARAM].tolist()
            ang = 0.35 * w * p[0]
            sc = math.exp(0.12 * w * p[1])
            rows.append((sc * math.cos(ang), sc * math.sin(ang), 0.12 * w * p[2],
                         0.12 * w * p[3], math.exp(0.25 * w * p[4])))
            ctrl_noise.append(z[_N_PARAM:_N_PARAM + _N_CTRL])
            noise.append(z[_N_PARAM + _N_CTRL:])
    N = len(rows)
    if N == 0:
        return (torch.empty(0, 5), torch.empty(0, MAX_STROKES, 3, 2), torch.empty(0, P))
    aff = torch.tensor(rows, dtype=torch.float32)
    cn = torch.stack(ctrl_noise).view(N, MAX_STROKES, 3, 2) * (0.10 * w)
    pn = torch.stack(noise) * (0.10 * w)
    return aff, cn, pn


def generate_strokes(classes: Sequence[int], split: str, seed: int = 0,
                     samples_per_class: int = 100, image_size: int = 32, channels: int = 1,
                     within_class: float = 0.5, between_class: float = 0.25
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 ``[len(classes) * samples_per_class, channels, H, W]`` (class-major, sample
    index minor) and the position of each sample's class in ``classes`` (int64 ``[N]``)."""
    _check_knobs(within_class=within_class, channels=channels, image_size=image_size,
                 samples_per_class=samples_per_class)
    tpl = make_templates(classes, seed, between_class)
    C, n = len(classes), int(samples_per_class)
    aff, cn, pn = _sample_params(seed, split, classes, [n] * C, within_class, image_size)
    N = C * n
    pos = torch.arange(C).repeat_interleave(n)
    if N == 0:
        return torch.empty(0, channels, image_size, image_size, dtype=torch.uint8), pos
    ctrl = tpl.ctrl[pos] + cn  # [N, S, 3, 2]
    cs, sn, tx, ty, wf = (aff[:, k].view(N, 1, 1) for k in range(5))
    x, y = ctrl[..., 0], ctrl[..., 1]
    ctrl = torch.stack([cs * x - sn * y + tx, sn * x + cs * y + ty], dim=-1)
    width = tpl.width[pos] * wf.view(N, 1)
    width = torch.where(tpl.active[pos], width, torch.full_like(width, -float("inf")))
    inten = render_strokes(ctrl, width, image_size).view(N, -1)
    inten = inten.add_(pn).clamp_(0.0, 1.0).view(N, 1, image_size, image_size)
    if channels == 3:
        inten = inten * tpl.tint[pos].view(N, 3, 1, 1)
    imgs = inten.mul_(255.0).round_().to(torch.uint8)
    return imgs.contiguous(), pos


def _strokes_info(image_size: int = 32, channels: int = 1, **kw) -> SourceInfo:
    m = (0.5,) * channels
    return SourceInfo("strokes", None, channels, image_size, m, m,
                      extra={"unbounded_classes": True})


@register_source("strokes", info=_strokes_info)
def _build_strokes(split, root, num_classes, classes, seed, max_per_class, subset=None,
                   samples_per_class: int = 100, test_per_class: int = 20, image_size: int = 32,
                   channels: int = 1, within_class: float = 0.5, between_class: float = 0.25,
                   **kw):
    """Classes: ``classes=[...]`` (any non-negative ints) or ``range(num_classes)`` (default 10).
    ``max_per_class`` truncates the per-class count (samples ``0..m-1``, which are the same samples
    as in a larger source). ``root`` is ignored."""
    kw.pop("download", None)
    if kw:
        raise ConfigError(f"config key 'data.options': source 'strokes' got unexpected keyword(s) {sorted(kw)}")
    # the knobs come from data.options (image_size also from data.image_size, checked >= 4 by the schema)
    _check_knobs("data.options.", samples_per_class=samples_per_class, test_per_class=test_per_class,
                 image_size=image_size, channels=channels, within_class=within_class, between_class=between_class)
    if classes is not None:
        cl = sorted(int(c) for c in classes)
        if not cl or cl[0] < 0 or len(set(cl)) != len(cl):
            raise ConfigError(f"config key 'data.classes': classes must be distinct non-negative ints, got {list(classes)}")
    else:
        cl = list(range(10 if num_classes is None else int(num_classes)))
    n = samples_per_class if split == "train" else test_per_class
    if max_per_class is not None:
        n = min(n, int(max_per_class))
    imgs, pos = generate_strokes(cl, split, seed, n, image_size, channels, within_class,
                                 between_class)
    labels = pos
    if subset is not None and subset < len(labels):
        p = torch.randperm(len(labels), generator=generator(seed, "subset", split))
        keep = torch.sort(p[:subset]).values
        imgs, labels = imgs[keep], labels[keep]
    return ImageSource(name="strokes", split=split, images=imgs, labels=labels,
                       class_names=[f"stroke_{c:04d}" for c in cl], channels=channels,
                       image_size=image_size, original_classes=cl,
                       meta={"within_class": within_class, "between_class": between_class,
                             "per_class": n})
