"""neural_mesh: neural mesh models (NeMo) — backbones, vertex-feature meshes, contrastive
training, render-and-compare pose fitting, ready-to-use pose models built from a mesh, a
regression baseline and pose metrics."""

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
from .fitting import (
    FitConfig,
    InitGrid,
    PoseParams,
    PoseResult,
    fit_pose,
    init_grid_for,
    nemo_loss,
    object_margins,
    params_from_pose,
    pose_from_params,
    render_features,
)
from .checkpoints import CheckpointError
from .build import BUILD_PRESETS, BuildConfig, build_model, default_cache_dir, model_cache_path
from .metrics import METRIC_NAMES, format_metrics_table, pose_metrics, rotation_error
from .model import PoseModel
from .neural_mesh import ModelError, NeuralMesh
from .overlay import overlay, silhouette_outline
from .regression import (
    PoseRegressor,
    RegressionConfig,
    load_regressor,
    save_regressor,
    train_regressor,
)
from .training import (
    Checkpoint,
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
    "render_features",
    "nemo_loss",
    "object_margins",
    "PoseParams",
    "pose_from_params",
    "params_from_pose",
    "FitConfig",
    "PoseResult",
    "InitGrid",
    "init_grid_for",
    "fit_pose",
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
    "PoseModel",
    "overlay",
    "silhouette_outline",
    "BuildConfig",
    "BUILD_PRESETS",
    "build_model",
    "default_cache_dir",
    "model_cache_path",
    "RegressionConfig",
    "PoseRegressor",
    "train_regressor",
    "save_regressor",
    "load_regressor",
]
