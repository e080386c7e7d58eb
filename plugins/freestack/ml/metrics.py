"""Metrics for classification (loss, accuracy, macro-F1, log-loss) and regression (RMSE, MAE, R²)."""

from __future__ import annotations

import numpy as np

from freestack.errors import FreestackError

# the metric each task early-stops on, and whether higher is better
PRIMARY = {
    "classification": ("accuracy", True),
    "regression": ("rmse", False),
    "generation": ("perplexity", False),
    "preference": ("reward_margin", True),
    "grpo": ("reward", True),
}

# the validation metrics a training of each task records (``val_`` + each); a preference or GRPO model
# scores itself, so its metrics are known only once it has
RECORDED = {
    "classification": ("loss", "accuracy", "macro_f1", "log_loss"),
    "regression": ("loss", "rmse", "mae", "r2"),
    "generation": ("loss", "perplexity", "tokens"),
}


class UnknownMetric(FreestackError, KeyError):
    """A kept metric the training does not record; the message names it, the ones it records and what
    to pass instead. A KeyError too, for code that caught the bare one."""

    def __str__(self) -> str:
        return str(self.args[0])


def check_kept(task: str, metric: str, recorded: list[str] | tuple[str, ...] | None = None) -> None:
    """Refuse a kept metric (``keep_metric``) that a training of ``task`` does not record: against
    ``recorded`` (the metrics an epoch produced), else the task's known ones (nothing to check for a task
    whose model scores itself)."""
    known = list(recorded) if recorded is not None else list(RECORDED.get(task, ()))
    if not known or metric in known:
        return
    bare = metric.removeprefix("val_")
    hint = (
        f"pass keep_metric={bare!r}: the name without the val_ prefix"
        if bare in known
        else "pass one of these (without the val_ prefix the history adds), or None for the task's own"
    )
    raise UnknownMetric(
        f"keep_metric {metric!r} is not a metric a {task} training records; it records "
        f"{', '.join(known)} (val_<name> in its history): {hint}"
    )


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    n_classes = proba.shape[1]
    pred = proba.argmax(axis=1)
    eps = 1e-12
    log_loss = float(-np.mean(np.log(np.clip(proba[np.arange(len(y_true)), y_true], eps, 1.0))))
    f1s = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (y_true == c))
        fp = np.sum((pred == c) & (y_true != c))
        fn = np.sum((pred != c) & (y_true == c))
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": float(np.mean(pred == y_true)) if len(y_true) else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "log_loss": log_loss,
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    err = y_pred - y_true
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2)) if len(y_true) else 0.0
    return {
        "rmse": float(np.sqrt(np.mean(err**2))) if len(err) else 0.0,
        "mae": float(np.mean(np.abs(err))) if len(err) else 0.0,
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
    }


def is_better(task: str, new: float, best: float | None, *, higher: bool | None = None) -> bool:
    """Whether ``new`` beats ``best`` on the task's metric (``higher``: whether higher is better, for a
    metric other than the task's)."""
    if best is None:
        return True
    return new > best if (PRIMARY[task][1] if higher is None else higher) else new < best
