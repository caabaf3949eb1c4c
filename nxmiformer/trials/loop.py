"""Pieces shared by the dense fine-tune and the compression trials: seeding, a resumable batch
stream, the training step, evaluation, and losses."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import GlueData, make_dataloader
from .metrics import compute_metrics


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class BatchStream:
    """Endless shuffled batches over a training set; epoch ``e`` uses seed ``seed + e``, so the
    stream can be restarted at any step and yields the same batches."""

    def __init__(self, dataset, tokenizer, batch_size: int, seed: int):
        self.dataset, self.tokenizer, self.batch_size, self.seed = dataset, tokenizer, batch_size, seed
        self.per_epoch = max(1, -(-len(dataset) // batch_size))

    def from_step(self, step: int) -> Iterator[dict]:
        epoch, offset = divmod(step, self.per_epoch)
        while True:
            loader = make_dataloader(self.dataset, self.tokenizer, self.batch_size, shuffle=True, seed=self.seed + epoch)
            for i, batch in enumerate(loader):
                if i >= offset:
                    yield batch
            epoch, offset = epoch + 1, 0


def autocast(device: torch.device, precision: str):
    """The training forward's autocast: bf16 matmuls under ``precision="bf16"``, nothing under
    ``fp32``. Elementwise work (fake-quant, masks) stays in the weights' fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def model_inputs(batch: dict, device: torch.device | str | None = None) -> dict:
    """The batch without its labels, moved to ``device`` when given."""
    return {k: (v.to(device) if device is not None else v) for k, v in batch.items() if k != "labels"}


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither (an
    ONNX Runtime session behind a module)."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return torch.device("cpu") if tensor is None else tensor.device


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when this process sees a GPU, else CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import NxmiError

        raise NxmiError(f"device {name} but this process sees no GPU (torch.cuda.is_available() is False); "
                        f"use --device cpu or auto")
    return torch.device(name)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def train_step(
    model: nn.Module,
    batch: dict,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    regression: bool,
    teacher: nn.Module | None = None,
    kd_alpha: float = 0.0,
    kd_temperature: float = 1.0,
    penalty: Callable[[], torch.Tensor] | None = None,
    precision: str = "fp32",
) -> float:
    """One optimizer step on ``batch``: forward, loss, backward, gradient clipping to norm 1,
    optimizer and schedule step.

    The loss is the task loss, mixed with ``kd_alpha`` of the distillation loss from ``teacher``
    when one is given, plus ``penalty()`` when given; the forward runs under :func:`autocast` for
    ``precision``, the losses and the penalty in fp32. Returns the loss without the penalty; raises
    :class:`NonFiniteLoss` (before touching the weights) when the loss is not finite.
    """
    device = model_device(model)
    inputs, labels = model_inputs(batch, device), batch["labels"].to(device)
    with autocast(device, precision):
        logits = model(**inputs).logits.float()
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(**inputs).logits.float()
    loss = task_loss(logits, labels, regression)
    if teacher_logits is not None:
        kd = distillation_loss(logits, teacher_logits, kd_temperature, regression)
        loss = (1 - kd_alpha) * loss + kd_alpha * kd
    reported = float(loss.detach())
    if penalty is not None:
        loss = loss + penalty()
    total = float(loss.detach())
    if not math.isfinite(total):  # the schedule counts the steps taken before this one
        raise NonFiniteLoss(f"non-finite loss {total} at step {schedule.last_epoch}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    return reported


@torch.no_grad()
def predict(model: nn.Module, dataset, tokenizer, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over a tokenised dataset, in eval mode. The global random state is left
    as it was (a DataLoader draws a seed from it even unshuffled), so an evaluation, or a cached
    one skipped, never changes what training does next."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    device = model_device(model)
    with torch.random.fork_rng(devices=[]):
        for batch in make_dataloader(dataset, tokenizer, batch_size):
            logits.append(model(**model_inputs(batch, device)).logits.float().cpu())
            labels.append(batch["labels"])
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def evaluate(model: nn.Module, data: GlueData, tokenizer, batch_size: int = 64,
             keep_predictions: bool = False) -> dict[str, float]:
    """The task's metrics of ``model`` on every validation split of ``data``.

    The first split's metrics are returned under their plain names (``accuracy``, ``primary``...);
    further splits (mnli's mismatched set) under ``<split>/<metric>``. Also returns ``eval_loss``
    of the first split and, with ``keep_predictions``, ``predictions``: the first split's
    prediction per row, in order, as a JSON list (see :func:`encode_predictions`), so that two
    models scored on the same rows can be compared row by row (a paired difference).
    """
    out: dict[str, float] = {}
    for i, (split, dataset) in enumerate(data.eval.items()):
        logits, labels = predict(model, dataset, tokenizer, batch_size)
        metrics = compute_metrics(data.task, logits, labels)
        if i == 0:
            out.update(metrics)
            out["eval_loss"] = float(task_loss(torch.from_numpy(logits), torch.from_numpy(labels), data.task.is_regression))
            if keep_predictions:
                out["predictions"] = encode_predictions(logits, data.task.is_regression)
        else:
            out.update({f"{split}/{k}": v for k, v in metrics.items()})
    return out


def encode_predictions(logits: np.ndarray, regression: bool) -> str:
    """Predictions as a JSON list: the class id of each row (argmax), or its score for a
    regression task (9 significant digits: a float32 exactly, so that a nearly constant model's
    scores keep their order and its correlation metrics come back unchanged). The decoded list goes
    to :func:`nxmiformer.trials.metrics.compute_metrics` as logits would."""
    if regression:
        return json.dumps([float(f"{v:.9g}") for v in np.asarray(logits).reshape(len(logits), -1)[:, 0]])
    return json.dumps(np.asarray(logits).argmax(axis=-1).astype(int).tolist(), separators=(",", ":"))


def selection_metrics(model: nn.Module, data: GlueData, tokenizer, reference: np.ndarray | None = None,
                      batch_size: int = 64, keep_predictions: bool = False) -> dict[str, float]:
    """What a search decides on, measured on the selection rows (none: ``{}``): the task's
    ``selection_primary`` metric, the task loss ``selection_loss``, the same loss after the
    best rescaling of the outputs on those rows ``selection_loss_calibrated``
    (:func:`calibrated_loss`) and, given the dense warm
    start's logits on the same rows, ``selection_kl``: the mean KL divergence of the model's
    predictions from the dense model's (squared error of the outputs for a regression task).
    With ``keep_predictions``, also ``selection_predictions``: the prediction per selection row,
    in order (:func:`encode_predictions`), so that two trials' lead on these rows has a paired
    standard error."""
    if data.selection is None:
        return {}
    logits, labels = predict(model, data.selection, tokenizer, batch_size)
    regression = data.task.is_regression
    out = {"selection_primary": compute_metrics(data.task, logits, labels)["primary"],
           "selection_loss": float(task_loss(torch.from_numpy(logits), torch.from_numpy(labels), regression)),
           "selection_loss_calibrated": calibrated_loss(logits, labels, regression)}
    if reference is not None:
        out["selection_kl"] = float(distillation_loss(torch.from_numpy(logits), torch.from_numpy(reference), 1.0,
                                                      regression))
    if keep_predictions:
        out["selection_predictions"] = encode_predictions(logits, regression)
    return out


def calibrated_loss(logits: np.ndarray, labels: np.ndarray, regression: bool) -> float:
    """The task loss of ``logits`` on ``labels`` after the rescaling of the outputs that minimises
    it on these rows: the cross-entropy at the best temperature (``softmax(logits / T)``, T > 0;
    ``log(classes)`` in the limit of a large T) for classification, the mean squared error of the
    least-squares affine fit ``a * score + b`` for regression.

    It keeps what the model ranks and separates and drops how confident it is: two models that
    differ only in a temperature have the same calibrated loss. The cross-entropy is convex in
    ``1 / T`` (a log-sum-exp of linear functions), so a bounded scalar search finds its minimum."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if regression:
        score, target = logits.reshape(len(logits), -1)[:, 0], labels.astype(np.float64)
        design = np.stack([score, np.ones_like(score)], axis=1)
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        return float(np.mean((design @ coef - target) ** 2))
    from scipy.optimize import minimize_scalar

    scores, targets = torch.from_numpy(logits), torch.from_numpy(labels)

    def loss(inverse_temperature: float) -> float:
        return float(task_loss(scores * inverse_temperature, targets, regression=False))

    spread = float(np.ptp(logits, axis=-1).max()) if logits.size else 0.0
    upper = 100.0 / max(spread, 1e-3)  # beyond this every softmax is one-hot to machine precision
    best = minimize_scalar(loss, bounds=(0.0, upper), method="bounded", options={"xatol": upper * 1e-6})
    return min(loss(best.x), loss(1.0))


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels.long())


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, regression: bool) -> torch.Tensor:
    """Logit distillation: temperature-scaled KL for classification, MSE for regression."""
    if regression:
        return F.mse_loss(student, teacher)
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t
