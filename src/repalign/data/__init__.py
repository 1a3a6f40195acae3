"""Data: image sources (registry, class subsets), multi-view augmentation, seeded sampler, loaders.

Public API::

    build_source(name, split, root=None, num_classes=None, classes=None, seed=0,
                 max_per_class=None, **kw) -> ImageSource
    source_info(name, **kw) -> SourceInfo
    SOURCES, register_source(name, info)
    MultiViewTransform(recipe, image_size, channels, num_views, seed, mean=None, std=None)
    eval_transform(image_size, channels, mean=None, std=None) -> EvalTransform
    SeededBatchSampler(labels, batch_size, seed, balanced=False, drop_last=True); shard(...)
    make_train_loader(source, transform, sampler, num_workers=0) -> TrainLoader
    extract_loader(source, eval_transform, batch_size, num_workers=0) -> DataLoader
"""
from repalign.data.sources import (
    FASHION_MNIST_CLASSES,
    SOURCES,
    ImageSource,
    SourceInfo,
    build_source,
    default_normalization,
    digits_split_indices,
    read_idx,
    register_source,
    select_classes,
    source_info,
    write_idx,
)
from repalign.data.strokes import generate_strokes, make_templates, render_strokes
from repalign.data.views import RECIPES, EvalTransform, MultiViewTransform, eval_transform
from repalign.data.sampler import SeededBatchSampler, epoch_order, shard
from repalign.data.loader import (
    EvalBatchDataset,
    TrainLoader,
    ViewBatchDataset,
    extract_loader,
    make_train_loader,
)

__all__ = [
    "FASHION_MNIST_CLASSES", "SOURCES", "ImageSource", "SourceInfo", "build_source",
    "default_normalization", "digits_split_indices", "read_idx", "register_source",
    "select_classes", "source_info", "write_idx",
    "generate_strokes", "make_templates", "render_strokes",
    "RECIPES", "EvalTransform", "MultiViewTransform", "eval_transform",
    "SeededBatchSampler", "epoch_order", "shard",
    "EvalBatchDataset", "TrainLoader", "ViewBatchDataset", "extract_loader", "make_train_loader",
]
