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
from .neural_mesh import ModelError, NeuralMesh
from .training import (
    Checkpoint,
    CheckpointError,
    ContrastiveLoss,
    TrainConfig,
    TrainResult,
    load_checkpoint,
    nemo_contrastive_loss,
    project_vertices,
    sample_background_features,
    sample_vertex_features,
    train,
    update_vertex_bank,
)

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
    "NeuralMesh",
    "ModelError",
    "TrainConfig",
    "TrainResult",
    "Checkpoint",
    "CheckpointError",
    "ContrastiveLoss",
    "nemo_contrastive_loss",
    "sample_vertex_features",
    "sample_background_features",
    "update_vertex_bank",
    "project_vertices",
    "train",
    "load_checkpoint",
]
