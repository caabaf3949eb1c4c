"""Trials: GLUE data and metrics, and (later) the short ADMM+QAT fine-tune and its Ray trainable."""

from nxmiformer.trials.data import (
    GLUE_DIR_ENV,
    HUB_DATASET,
    TASKS,
    GlueData,
    TaskInfo,
    get_task,
    load_glue,
    make_dataloader,
    prepare_task_data,
    subsample,
    tokenize_dataset,
)
from nxmiformer.trials.metrics import compute_metrics, primary_metric

__all__ = [
    "GLUE_DIR_ENV",
    "HUB_DATASET",
    "TASKS",
    "GlueData",
    "TaskInfo",
    "compute_metrics",
    "get_task",
    "load_glue",
    "make_dataloader",
    "prepare_task_data",
    "primary_metric",
    "subsample",
    "tokenize_dataset",
]
