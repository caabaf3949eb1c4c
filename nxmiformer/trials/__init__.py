"""Trials: task data (GLUE presets and a user's own) and metrics, the dense warm start, and the
short ADMM+QAT fine-tune that turns a compression plan into a trained, measured model."""

from nxmiformer.trials.data import (
    GLUE_DIR_ENV,
    HUB_DATASET,
    TASKS,
    GlueData,
    TaskInfo,
    describe_task,
    get_task,
    load_glue,
    load_task,
    make_dataloader,
    prepare_task_data,
    subsample,
    tokenize_dataset,
)
from nxmiformer.trials.metrics import compute_metrics, primary_metric
from nxmiformer.trials.config import DataConfig, DenseConfig, TrialConfig, default_cache_dir
from nxmiformer.trials.dense import DenseResult, finetune_dense
from nxmiformer.trials.loop import NonFiniteLoss, evaluate
from nxmiformer.trials.trial import Trial, TrialResult, run_trial

__all__ = [
    "DataConfig",
    "DenseConfig",
    "DenseResult",
    "NonFiniteLoss",
    "Trial",
    "TrialConfig",
    "TrialResult",
    "default_cache_dir",
    "evaluate",
    "finetune_dense",
    "run_trial",
    "GLUE_DIR_ENV",
    "HUB_DATASET",
    "TASKS",
    "GlueData",
    "TaskInfo",
    "describe_task",
    "compute_metrics",
    "get_task",
    "load_glue",
    "load_task",
    "make_dataloader",
    "prepare_task_data",
    "primary_metric",
    "subsample",
    "tokenize_dataset",
]
