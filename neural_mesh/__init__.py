"""neural_mesh: neural mesh models (NeMo) — backbones, vertex-feature meshes, contrastive
training, render-and-compare pose fitting and pose metrics."""

from .backbones import (
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    BackboneConfig,
    FeatureBackbone,
    build_backbone,
    feature_intrinsics,
    feature_size,
)
from .metrics import METRIC_NAMES, format_metrics_table, pose_metrics, rotation_error

__all__ = [
    "ARCHS",
    "PRESETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneConfig",
    "FeatureBackbone",
    "build_backbone",
    "feature_intrinsics",
    "feature_size",
    "METRIC_NAMES",
    "rotation_error",
    "pose_metrics",
    "format_metrics_table",
]
