"""The Python entry for notebooks and scripts: :func:`train` with the researcher's own encoder,
objectives and data, returning the run directory.

    run = repalign.train("demo", encoder=my_encoder, objectives={"vicreg": my_loss},
                         sources=(train_ds, test_ds), run_dir="runs/mine", overrides=["train.epochs=2"])

Objects given here are stored in the run's ``config.yaml`` as import references when they can be
imported back (``module:qualname``, or ``/abs/file.py:qualname`` for a module loaded from a file;
:func:`repalign.plugins.register_in_process`), so later processes rebuild them (a plug-in import:
``--trust-code`` / ``trust_code=True`` / ``REPALIGN_TRUST_CODE=1``). Objects without one (defined in a
notebook or inside a function) are stored as ``python:<name>``: later commands in another process say so
in one line naming the arm and key, and take the object back — ``repalign.load_encoder(run, arm,
encoder=MyEncoder)``, ``export_encoder(..., encoder=...)``, ``train(..., resume=True)`` with the objects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from repalign.config import ConfigError, load_config, validate


def _as_config(config: str | Path | Mapping[str, Any] | None, overrides: Sequence[str]) -> dict[str, Any]:
    """A resolved config from a path / bundled name / mapping / ``None``, with ``key=value`` overrides."""
    if config is None or isinstance(config, (str, Path)):
        return load_config(config, list(overrides))
    import tempfile

    from repalign.config import dump_config

    with tempfile.TemporaryDirectory() as d:  # the loader's override logic, applied to the mapping
        p = Path(d) / f"{config.get('name') or 'run'}.yaml"
        p.write_text(dump_config(dict(config)))
        return load_config(p, list(overrides))


def train(config: str | Path | Mapping[str, Any] | None = None, *, encoder: Any = None,
          objectives: Mapping[str, Any] | None = None, sources: tuple[Any, Any] | None = None,
          run_dir: str | Path | None = None, overrides: Sequence[str] = (), resume: bool = False) -> Path:
    """Train a coupled run and return its run directory.

    ``config``: a path, a bundled name (``"demo"``), a mapping, or ``None`` (defaults).
    ``encoder``: a callable ``(channels, image_size, **model.options) → nn.Module`` mapping images to
    features ``[N, F]`` (or a reference string). ``objectives``: arm name → an
    :class:`~repalign.objectives.Objective`, a loss function ``(z, labels, temperature) → loss``, a
    registered name or a reference; these arms replace the config's arms of the same name (others are
    kept). ``sources``: ``(train, test)`` datasets (an :class:`~repalign.data.ImageSource` or a map-style
    dataset of ``(image uint8 [C, H, W] or PIL, int label)``) used instead of ``data.source``.
    ``overrides``: ``key=value`` strings applied to the config.
    """
    from repalign.plugins import register_in_process
    from repalign.training import default_run_dir
    from repalign.training import train as _train

    cfg = _as_config(config, overrides)
    if encoder is not None:
        cfg["model"]["encoder"] = encoder if isinstance(encoder, str) else register_in_process(encoder, "encoder")
    if objectives:
        arms = dict(cfg.get("arms") or {})
        for name, obj in objectives.items():
            ref = obj if isinstance(obj, str) else register_in_process(obj, "objective")
            arms[name] = {**(arms.get(name) or {}), "objective": ref} if isinstance(arms.get(name), Mapping) \
                else {"objective": ref}
            arms[name].pop("same_as", None)
        cfg["arms"] = arms
    src_pair = None
    if sources is not None:
        if not (isinstance(sources, (tuple, list)) and len(sources) == 2):
            raise ConfigError("sources: expected a (train, test) pair of datasets")
        from repalign.data.external import dataset_to_source

        d = cfg["data"]
        tr = dataset_to_source(sources[0], "python:sources", "train", num_classes=d["num_classes"], classes=d["classes"],
                               seed=cfg["seed"], max_per_class=d["max_per_class"], name="python")
        # the test split gets the train split's classes and labels (decided once)
        src_pair = (tr, dataset_to_source(sources[1], "python:sources", "test", seed=cfg["seed"],
                                          max_per_class=d["test_max_per_class"], name="python", mapping=tr.mapping))
        cfg["data"]["source"] = "python:sources"
    cfg = validate(cfg)
    rd = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    if src_pair is None:
        _train(cfg, rd, resume=resume)
    else:
        from repalign import distributed
        from repalign.training import CoupledTrainer

        distributed.init_from_env()
        t = CoupledTrainer(cfg, rd, resume=resume, sources=src_pair)  # type: ignore[arg-type]
        t.fit()
    return rd


__all__ = ["train"]
