"""The edge rules: the server believes a reply only as far as it matches what it assigned."""

import math

import numpy as np
import pytest

from gcfl.protocol import (
    ACCURACY,
    BATCH_SIZE,
    LOSS_FIELDS,
    LR,
    STATUS,
    EvaluateReport,
    FitReport,
    SearchInstruction,
    TrainInstruction,
)
from gcfl.strategy.genetic import Hyperparameters
from gcfl.strategy.judge import (
    EvaluateVerdict,
    judge_evaluate,
    judge_fit,
    no_reply,
    weighted_evaluation,
)

GLOBAL = [np.ones((3, 2), np.float32), np.zeros(2, np.float32)]
LR_ASSIGNED, BATCH_ASSIGNED, CID, CAPACITY, MAX_NORM = 0.0123456789, 32, 1, 50, 0.5
ASSIGNED = TrainInstruction(3, LR_ASSIGNED, BATCH_ASSIGNED)
PAIR = Hyperparameters(LR_ASSIGNED, BATCH_ASSIGNED)
SEARCH = SearchInstruction(1, lr_grid=(0.1, 0.01, 0.001), batch_grid=(16, 32))


def _metrics(**changes) -> dict:
    fields = dict(
        client_id=CID,
        lr=LR_ASSIGNED,
        batch_size=BATCH_ASSIGNED,
        status="ok",
        train_loss=0.5,
        first_loss=1.5,
        val_loss_before=1.2,
        val_loss=0.7,
        val_accuracy=0.8,
        local_loss_before=1.1,
        local_loss_after=0.6,
    )
    return FitReport(**{**fields, **changes}).to_metrics()


def _trained(delta: float = 0.01) -> list[np.ndarray]:
    return [w + np.float32(delta) for w in GLOBAL]


def _judge(metrics=None, *, instruction=ASSIGNED, num_examples=40, weights=None):
    return judge_fit(
        CID,
        instruction,
        _metrics() if metrics is None else metrics,
        num_examples,
        _trained() if weights is None else weights,
        GLOBAL,
        CAPACITY,
        MAX_NORM,
    )


def _refused_with(verdict, phrase: str) -> None:
    assert verdict.outcome == "refused" and verdict.update is None
    assert phrase in verdict.reason


# ------------------------------------------------------------------ accepted
def test_honest_reply_is_accepted_with_its_update():
    weights = _trained()
    verdict = _judge(weights=weights)
    assert verdict.outcome == "ok" and verdict.reason is None
    assert verdict.pair == PAIR
    assert verdict.update == (weights, 40)
    assert verdict.update_ratio == pytest.approx(0.01 * math.sqrt(8) / math.sqrt(6), rel=1e-4)


def test_lr_equal_up_to_float32_rounding_is_accepted():
    rounded = float(np.float32(LR_ASSIGNED))
    assert rounded != LR_ASSIGNED
    verdict = _judge(_metrics(lr=rounded))
    assert verdict.outcome == "ok" and verdict.pair == PAIR


def test_num_examples_equal_to_capacity_is_accepted():
    assert _judge(num_examples=CAPACITY).outcome == "ok"


# ------------------------------------------------------------------ the pair
def test_lr_off_by_more_than_float32_rounding_is_refused():
    _refused_with(_judge(_metrics(lr=LR_ASSIGNED * (1 + 1e-5))), "lr")


def test_different_batch_size_is_refused():
    _refused_with(_judge(_metrics(batch_size=BATCH_ASSIGNED + 1)), "batch-size")


def test_other_client_id_is_refused():
    _refused_with(_judge(_metrics(client_id=CID + 1)), "client-id")


@pytest.mark.parametrize(
    "metrics",
    [{}, {LR: "fast", BATCH_SIZE: "big"}, {**_metrics(), LR: "fast"}, {**_metrics(), STATUS: 1}],
    ids=["missing", "garbage", "str-lr", "int-status"],
)
def test_missing_or_garbage_metrics_are_refused_as_malformed(metrics):
    _refused_with(_judge(metrics), "malformed")


# ---------------------------------------------------------------- the losses
CHECKED_LOSSES = sorted(
    LOSS_FIELDS[name] for name in LOSS_FIELDS if name not in ("first_loss", "val_accuracy")
)


@pytest.mark.parametrize("key", CHECKED_LOSSES)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_of_an_ok_fit_is_refused(key, value):
    _refused_with(_judge({**_metrics(), key: value}), "not a finite number")


def test_diverged_report_with_nan_after_losses_is_accepted_as_diverged():
    metrics = _metrics(
        status="diverged",
        train_loss=math.nan,
        val_loss=math.nan,
        val_accuracy=math.nan,
        local_loss_after=math.nan,
    )
    verdict = _judge(metrics, weights=[])
    assert verdict.outcome == "diverged" and verdict.update is None
    assert verdict.pair == PAIR


def test_diverged_report_with_nan_val_loss_before_is_refused():
    verdict = _judge(_metrics(status="diverged", val_loss_before=math.nan, val_loss=math.nan))
    _refused_with(verdict, "val-loss-before")


@pytest.mark.parametrize("accuracy", [1.5, -0.1, math.nan])
def test_val_accuracy_outside_unit_interval_is_refused(accuracy):
    _refused_with(_judge({**_metrics(), LOSS_FIELDS["val_accuracy"]: accuracy}), "val-accuracy")


# --------------------------------------------------------------- the update
@pytest.mark.parametrize("num_examples", [0, -5, CAPACITY + 1])
def test_implausible_num_examples_is_refused(num_examples):
    _refused_with(_judge(num_examples=num_examples), f"num_examples {num_examples}")


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_refused(value):
    weights = _trained()
    weights[0][1, 1] = value
    _refused_with(_judge(weights=weights), "non-finite")


def test_wrong_number_of_arrays_is_refused():
    _refused_with(_judge(weights=_trained()[:1]), "1 arrays, expected 2")


def test_wrong_shape_is_refused():
    _refused_with(_judge(weights=[w.reshape(-1) for w in _trained()]), "shape")


def test_update_above_max_update_norm_is_refused():
    _refused_with(_judge(weights=_trained(delta=10.0)), "max-update-norm")


# ------------------------------------------------------------------ search
def test_search_reply_of_a_grid_point_is_believed_at_the_grids_value():
    metrics = _metrics(lr=float(np.float32(0.01)), batch_size=32)
    verdict = _judge(metrics, instruction=SEARCH)
    assert verdict.outcome == "ok"
    assert verdict.pair == Hyperparameters(0.01, 32)


@pytest.mark.parametrize(("lr", "batch_size"), [(0.02, 32), (0.01, 24), (1e9, 10**9)])
def test_search_reply_off_the_grid_is_refused_without_a_pair(lr, batch_size):
    verdict = _judge(_metrics(lr=lr, batch_size=batch_size), instruction=SEARCH)
    _refused_with(verdict, "not in the search grid")
    assert verdict.pair is None


# --------------------------------------------------------------- the verdict
def test_refused_reply_keeps_the_assigned_pair_not_the_claimed_one():
    verdict = _judge(_metrics(lr=1e9, batch_size=10**9))
    assert verdict.outcome == "refused" and verdict.pair == PAIR


def test_silent_client_keeps_its_assigned_pair_and_a_silent_search_none():
    assert no_reply(ASSIGNED, "timed-out", "late").pair == PAIR
    assert no_reply(SEARCH, "failed", "boom").pair is None


def test_report_is_believed_for_ok_and_diverged_fits():
    assert _judge().report_believed
    diverged = _metrics(status="diverged", val_loss=math.nan, local_loss_after=math.nan)
    assert _judge(diverged, weights=[]).report_believed


@pytest.mark.parametrize(
    "change",
    [{"num_examples": 0}, {"weights": _trained(delta=10.0)}, {"weights": _trained()[:1]}],
    ids=["examples", "norm", "arrays"],
)
def test_refusing_only_the_update_still_believes_the_report(change):
    verdict = _judge(**change)
    assert verdict.outcome == "refused" and verdict.report_believed
    assert verdict.report is not None


@pytest.mark.parametrize(
    "metrics",
    [
        _metrics(lr=0.5),
        _metrics(client_id=CID + 1),
        _metrics(val_loss=math.nan),
        {},
    ],
    ids=["lr", "client-id", "nan-loss", "malformed"],
)
def test_refusing_the_report_does_not_believe_it(metrics):
    verdict = _judge(metrics)
    assert verdict.outcome == "refused" and not verdict.report_believed


# ---------------------------------------------------------------- evaluation
def _evaluation(loss=0.4, accuracy=0.9, client_id=CID, num_examples=20, metrics=None):
    if metrics is None:
        metrics = EvaluateReport(client_id, loss, accuracy).to_metrics()
    return judge_evaluate(CID, loss, metrics, num_examples, CAPACITY)


def test_honest_evaluation_is_accepted():
    verdict = _evaluation()
    assert verdict.report == EvaluateReport(CID, 0.4, 0.9)
    assert verdict.num_examples == 20 and verdict.reason is None


@pytest.mark.parametrize("loss", [math.nan, math.inf])
def test_evaluation_with_non_finite_loss_is_refused(loss):
    verdict = _evaluation(loss=loss)
    assert verdict.report is None and "loss" in verdict.reason


@pytest.mark.parametrize("accuracy", [5.0, -0.1, math.nan])
def test_evaluation_with_accuracy_out_of_range_is_refused(accuracy):
    verdict = _evaluation(accuracy=accuracy)
    assert verdict.report is None and "accuracy" in verdict.reason


def test_evaluation_of_another_client_is_refused():
    verdict = _evaluation(client_id=CID + 1)
    assert verdict.report is None and "client-id" in verdict.reason


@pytest.mark.parametrize("num_examples", [0, -5, CAPACITY + 1])
def test_evaluation_with_implausible_num_examples_is_refused(num_examples):
    verdict = _evaluation(num_examples=num_examples)
    assert verdict.report is None and f"num_examples {num_examples}" in verdict.reason


@pytest.mark.parametrize("metrics", [{}, {ACCURACY: "high"}], ids=["missing", "garbage"])
def test_evaluation_with_malformed_metrics_is_refused(metrics):
    verdict = _evaluation(metrics=metrics)
    assert verdict.report is None and "malformed" in verdict.reason


def test_weighted_evaluation_weights_by_examples_and_ignores_refused():
    verdicts = [
        EvaluateVerdict(EvaluateReport(0, 1.0, 0.5), 10),
        EvaluateVerdict(EvaluateReport(1, 2.0, 1.0), 30),
        EvaluateVerdict(None, 1000, "refused"),
    ]
    loss, accuracy = weighted_evaluation(verdicts)
    assert loss == pytest.approx(1.75) and accuracy == pytest.approx(0.875)


def test_weighted_evaluation_without_an_accepted_one_is_none():
    assert weighted_evaluation([]) is None
    assert weighted_evaluation([EvaluateVerdict(None, 10, "refused")]) is None
