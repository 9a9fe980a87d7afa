"""The one contract for a metric, shared by patching, attribution and steering.

A metric maps a run's logits ``[batch, pos, d_vocab]`` to a floating tensor of shape ``[batch]`` (one value per
prompt, or per prompt pair) or a scalar. The library reports the mean over the batch. Anything else (another
shape, a Python float, an integer tensor) is a ``MetricError``, raised before the first forward: ``check_metric``
calls the metric once on zero logits of the right shape, which also shows whether it depends on the logits
at all (attribution needs a gradient).

Its value on each real run must also be finite: a NaN or an infinity is a ``MetricError`` that names the run.
The clean and corrupted runs come first, so a metric that has no value there fails before the patched runs.

Example:
    >>> mary = model.to_single_token(" Mary")
    >>> metric = lambda logits: logits[:, -1, mary]         # [batch]: one value per prompt
    >>> metric = lambda logits: logits[:, -1, mary].mean()  # a scalar: the same mean
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import MetricError
from interp.inputs import check_gradients_on, check_positive_int

__all__ = ["Metric", "MetricError", "bootstrap_interval", "check_metric", "metric_mean", "metric_values"]

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Tensor]


def metric_values(metric: Metric, logits: Float[Tensor, "batch pos d_vocab"], run: str = "a patched run") -> Tensor:
    """The metric on ``logits`` of ``run`` (named in errors), checked against the contract: a ``[batch]`` tensor
    or a scalar, every value finite. A NaN or infinite value is a ``MetricError``: a score built on it would be
    NaN, or, for gradient methods, a plausible number from a metric that has no value."""
    value = _checked_shape(metric, logits)
    finite = torch.isfinite(value.detach())
    if not finite.all():
        bad = (~finite).flatten().nonzero().flatten().tolist()
        where = f" for prompt {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "") if value.ndim else ""
        raise MetricError(f"the metric is {value.detach().flatten()[bad[0]].item()} on {run}{where}: it must be "
                          "finite (a log of a probability that underflowed? take log_softmax, not log of softmax)")
    return value


def _checked_shape(metric: Metric, logits: Tensor) -> Tensor:
    value = metric(logits)
    batch = logits.shape[0]
    if not isinstance(value, Tensor) or not value.is_floating_point():
        got = f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
        raise MetricError(f"the metric returned {got}: it must return a floating tensor of shape [batch] "
                          f"(here [{batch}]) or a scalar tensor")
    if value.shape not in ((), (batch,)):
        raise MetricError(f"the metric returned shape {tuple(value.shape)}: it must return shape [batch] (here "
                          f"[{batch}]) or a scalar, e.g. logits[:, -1, token] or logits[:, -1, token].mean()")
    return value


def metric_mean(metric: Metric, logits: Float[Tensor, "batch pos d_vocab"], run: str = "a patched run") -> Tensor:
    """The metric's mean over the batch (a scalar tensor; it keeps the graph, for gradients)."""
    return metric_values(metric, logits, run).mean()


def check_metric(metric: Metric, model, batch: int, pos: int, *, needs_grad: bool = False) -> bool:
    """Call ``metric`` once on zero logits ``[batch, pos, d_vocab]``, before any forward, and check the contract;
    with ``needs_grad``, also that the value depends on the logits (and that gradients can be on). Returns whether it gives one value per
    prompt (``[batch]``) rather than a scalar."""
    if not callable(metric):
        raise MetricError(f"metric must be a function of the logits, got {type(metric).__name__}")
    if needs_grad:
        check_gradients_on("attribution")
    zero = torch.zeros((), device=model.cfg.device, requires_grad=needs_grad)
    with torch.enable_grad() if needs_grad else torch.no_grad():
        value = _checked_shape(metric, zero.expand(batch, pos, model.cfg.d_vocab))  # a view: no memory
    if needs_grad and not value.requires_grad:
        raise MetricError("the metric does not depend on the logits, so it has no gradient to attribute: "
                          "compute it from the logits it is given")
    return value.ndim == 1


def bootstrap_interval(values: Float[Tensor, "stat item"], *, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[Tensor, Tensor]:
    """The percentile bootstrap interval of the mean over items (prompt pairs, corpus rows), per statistic.

    The same seeded resamples serve every statistic, and each resample's mean is a weighted sum, so thousands
    of statistics (every edge of a graph) take one matmul. With one item there is no interval: every resample
    is that item, and a zero-width interval would read as certainty, so both ends are NaN.
    """
    resamples = check_positive_int(resamples, "resamples")
    if not isinstance(level, float | int) or not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level!r}")
    n = values.shape[1]
    if n < 2:
        nan = torch.full(values.shape[:1], float("nan"))
        return nan, nan.clone()
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(n, (resamples, n), generator=generator)
    weights = torch.zeros(resamples, n).scatter_add_(1, draws, torch.ones(resamples, n)) / n  # [resample, item]
    means = values.float().cpu() @ weights.T  # [stat, resample]
    tail = (1 - level) / 2
    low, high = (means.kthvalue(1 + round(q * (resamples - 1)), dim=1).values for q in (tail, 1 - tail))
    return low, high
