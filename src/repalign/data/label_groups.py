"""Label granularity for one arm (issue 18): the C class labels mapped to K superclasses.

CL never sees labels, so mapping the labels an arm's objective sees changes that objective alone —
the same images, batches, views and initial weights for every arm of the coupled run. Two forms:

* ``label_groups: K`` — a seeded, balanced partition: the classes in the order of a permutation
  ``π`` drawn from ``derive_seed(run_seed, "label_groups", K)`` are dealt round-robin to the groups,
  ``group(π_i) = i mod K``; group sizes are ⌈C/K⌉ or ⌊C/K⌋ (the rule when K does not divide C).
  Every arm with the same K in one run gets the same partition; another run seed draws another one.
  ``K = C`` is the identity (no mapping at all, so the arm is bitwise the plain arm).
* ``label_map: FILE`` — a JSON or YAML list of length C (entry i: the superclass of class i, any
  ints or strings; or a mapping whose ``groups`` key holds that list); the distinct values, sorted,
  become 0..K−1. ``repalign:NAME`` names a bundled map, ``configs/label_maps/NAME.yaml`` — today
  ``repalign:cifar100_coarse`` (CIFAR-100's 20 superclasses of 5 classes each).

The lookup is a long tensor ``[C]``: ``labels_arm = lookup[labels]``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repalign.errors import ConfigError

if TYPE_CHECKING:  # torch is imported by the functions that build lookups; resolving a file name needs none
    import torch

__all__ = ["balanced_groups", "load_label_map", "arm_label_lookup", "resolve_label_map", "BUNDLED_PREFIX"]

#: prefix of a bundled map's name (``repalign:cifar100_coarse`` → ``configs/label_maps/cifar100_coarse.yaml``)
BUNDLED_PREFIX = "repalign:"


def resolve_label_map(value: str | Path, where: str = "label_map") -> Path:
    """The file behind a ``label_map`` value: ``repalign:NAME`` → the bundled ``configs/label_maps/NAME.yaml``
    (one line naming the bundled maps when there is none), anything else → that path."""
    v = str(value)
    if not v.startswith(BUNDLED_PREFIX):
        return Path(v)
    folder = Path(__file__).resolve().parent.parent / "configs" / "label_maps"
    name = v[len(BUNDLED_PREFIX):]
    p = folder / f"{name}.yaml"
    if "/" in name or "\\" in name or not p.is_file():
        have = ", ".join(f"{BUNDLED_PREFIX}{f.stem}" for f in sorted(folder.glob("*.yaml"))) or "none"
        raise ConfigError(f"config key {where!r}: no bundled label map {v!r} (bundled: {have})")
    return p


def balanced_groups(num_classes: int, k: int, seed: int) -> torch.Tensor:
    """Seeded balanced partition of ``num_classes`` classes into ``k`` groups → lookup ``[C]`` (int64).

    ``group(π_i) = i mod k`` for a permutation π drawn with ``seed``; group sizes differ by at most one."""
    import torch

    if not 2 <= k <= num_classes:
        raise ConfigError(f"label_groups: K must lie in 2..C = 2..{num_classes}, got {k}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(num_classes, generator=g)
    lookup = torch.empty(num_classes, dtype=torch.long)
    lookup[perm] = torch.arange(num_classes) % k
    return lookup


def load_label_map(path: str | Path, num_classes: int, where: str = "label_map") -> torch.Tensor:
    """Read a label map file (JSON or YAML list of length C) → lookup ``[C]`` (int64, values 0..K−1 in
    the sorted order of the file's distinct entries). One :class:`ConfigError` line for every bad file."""
    import torch

    p = resolve_label_map(path, where)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config key {where!r}: cannot read {str(p)!r}: {e}") from None
    try:
        if p.suffix.lower() == ".json":
            data: Any = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (ValueError, Exception) as e:  # json.JSONDecodeError / yaml.YAMLError
        raise ConfigError(f"config key {where!r}: {str(p)!r} is not valid JSON/YAML: {str(e).splitlines()[0]}") from None
    if isinstance(data, dict) and "groups" in data:
        data = data["groups"]
    if not isinstance(data, list):
        raise ConfigError(f"config key {where!r}: {str(p)!r} must hold a list of length C = {num_classes}, "
                          f"got {type(data).__name__}")
    if len(data) != num_classes:
        raise ConfigError(f"config key {where!r}: {str(p)!r} has {len(data)} entries, the run has C = {num_classes} classes")
    bad = [i for i, v in enumerate(data) if isinstance(v, bool) or not isinstance(v, (int, str))]
    if bad:
        raise ConfigError(f"config key {where!r}: {str(p)!r} entry {bad[0]} is {data[bad[0]]!r}; entries must be "
                          "integers or strings")
    values = sorted(set(data), key=lambda v: (isinstance(v, str), v))
    if len(values) < 2:
        raise ConfigError(f"config key {where!r}: {str(p)!r} maps every class to one group; need at least 2")
    index = {v: i for i, v in enumerate(values)}
    return torch.tensor([index[v] for v in data], dtype=torch.long)


def arm_label_lookup(arm: Any, num_classes: int, run_seed: int) -> torch.Tensor | None:
    """The lookup of an :class:`~repalign.config.Arm` (``None``: the arm sees the labels unchanged)."""
    k, path = getattr(arm, "label_groups", None), getattr(arm, "label_map", None)
    where = f"arms.{arm.name}"
    if path is not None:
        return load_label_map(path, num_classes, f"{where}.label_map")
    if k is None:
        return None
    if k > num_classes:
        raise ConfigError(f"config key '{where}.label_groups': K = {k} exceeds the run's C = {num_classes} classes")
    if k == num_classes:
        return None  # C groups of one class: the identity (bitwise the plain arm)
    from repalign.seeding import derive_seed

    return balanced_groups(num_classes, k, derive_seed(run_seed, "label_groups", k))
