"""The server's round without Flower: sampling, judging, evolving, rolling back, resuming."""

import json
import math

import numpy as np
import pytest

from gcfl.config import parse_run_config
from gcfl.protocol import (
    BATCH_SIZE,
    LOSS_FIELDS,
    LR,
    EvaluateReport,
    FitInstruction,
    FitReport,
    SearchInstruction,
)
from gcfl.strategy.coordinator import Coordinator, FitReply, NoReply
from gcfl.strategy.policy import RoundRules

GLOBAL = [np.ones((3, 2), np.float32), np.zeros(2, np.float32)]
CAPACITY = {cid: 50 for cid in range(6)}
SETTINGS = {"lr-min": 1e-4, "lr-max": 1e-1, "batch-min": 16, "batch-max": 64}


def _coordinator(**settings) -> Coordinator:
    run_config = {**SETTINGS, "min-fit-clients": 2, "max-update-norm": 0.5, **settings}
    return Coordinator(parse_run_config(run_config), CAPACITY)


def _pair(instruction: FitInstruction) -> tuple[float, int]:
    if isinstance(instruction, SearchInstruction):
        return instruction.lr_grid[1], instruction.batch_grid[1]
    return instruction.lr, instruction.batch_size


def _honest(cid, instruction, *, loss_before=1.0, noise=0.01, examples=40) -> FitReply:
    lr, batch_size = _pair(instruction)
    report = FitReport(
        cid,
        lr,
        batch_size,
        "ok",
        train_loss=0.5,
        first_loss=1.5,
        val_loss_before=loss_before,
        val_loss=0.8 * loss_before,
        val_accuracy=0.7,
        local_loss_before=loss_before,
        local_loss_after=0.7 * loss_before,
    )
    rng = np.random.default_rng([instruction.server_round, cid])
    weights = [w + rng.normal(0, noise, w.shape).astype(np.float32) for w in GLOBAL]
    return FitReply(report.to_metrics(), examples, weights)


def _round(coordinator, server_round, weights=GLOBAL, replace=None, **honest):
    """One fit round with honest replies, except those ``replace`` gives."""
    instructions = coordinator.start_fit(server_round, weights)
    replies = {cid: _honest(cid, ins, **honest) for cid, ins in instructions.items()}
    replies.update((replace or (lambda _: {}))(instructions))
    return instructions, coordinator.finish_fit(replies)


def _inside_space(coordinator, cid) -> bool:
    pair = coordinator.policy.assignment(cid)
    config = coordinator.config
    return (
        pair is not None
        and math.isfinite(pair.lr)
        and config.lr_min <= pair.lr <= config.lr_max
        and config.batch_min <= pair.batch_size <= config.batch_max
    )


# ------------------------------------------------------------------- fit
def test_honest_round_aggregates_every_client():
    coordinator = _coordinator()
    instructions = coordinator.start_fit(1, GLOBAL)
    replies = {cid: _honest(cid, ins) for cid, ins in instructions.items()}
    new = coordinator.finish_fit(replies)
    assert sorted(instructions) == sorted(CAPACITY)
    assert coordinator.round.status == "ok" and coordinator.round.accepted == len(CAPACITY)
    for index, array in enumerate(new):
        mean = np.mean([reply.weights[index] for reply in replies.values()], axis=0)
        np.testing.assert_allclose(array, mean, rtol=1e-6)
        assert not np.array_equal(array, GLOBAL[index])


def test_hostile_pair_claim_never_moves_anyone_outside_the_space():
    coordinator, weights = _coordinator(), GLOBAL

    def hostile(instructions):
        metrics = {**_honest(3, instructions[3]).metrics, LR: 1e9, BATCH_SIZE: 10**9}
        return {3: FitReply(metrics, 40, _honest(3, instructions[3]).weights)}

    for server_round in range(1, 21):
        instructions, new = _round(coordinator, server_round, weights, hostile)
        weights = new if new is not None else weights
        record = {c.id: c for c in coordinator.round.clients}[3]
        assert record.status == "refused" and record.reported_lr == 1e9
        assert (record.lr, record.batch_size) == _pair(instructions[3])
        outside = [cid for cid in CAPACITY if not _inside_space(coordinator, cid)]
        assert not outside, (server_round, {c: coordinator.policy.assignment(c) for c in outside})
        coordinator.close_round(None, None)


def test_search_round_with_nan_missing_and_late_replies_settles_everyone_inside_the_space():
    coordinator = _coordinator(init="search")
    nan_losses = dict.fromkeys(LOSS_FIELDS.values(), math.nan)

    def broken(instructions):
        nan = _honest(0, instructions[0])
        return {
            0: FitReply({**nan.metrics, **nan_losses}, 40, nan.weights),
            1: NoReply("failed", "hostile client raises"),
            2: NoReply("timed-out", "no reply within 20 s"),
        }

    instructions, new = _round(coordinator, 1, replace=broken)
    assert all(isinstance(ins, SearchInstruction) for ins in instructions.values())
    assert new is not None
    assert {c.id: c.status for c in coordinator.round.clients if c.id < 3} == {
        0: "refused",
        1: "failed",
        2: "timed-out",
    }
    assert all(_inside_space(coordinator, cid) for cid in CAPACITY)
    grid = coordinator.config.lr_grid_values
    for cid in (1, 2):  # they neither trained nor evolved: their pair is a fresh draw
        assert coordinator.policy.assignment(cid).lr not in grid
    coordinator.close_round(None, None)
    assert not any(
        isinstance(ins, SearchInstruction) for ins in coordinator.start_fit(2, new).values()
    )


def test_fewer_accepted_updates_than_min_fit_clients_fails_the_round():
    coordinator = _coordinator(**{"min-fit-clients": 3})

    def silent(instructions):
        return {cid: NoReply("failed", "boom") for cid in sorted(instructions)[2:]}

    _, new = _round(coordinator, 1, replace=silent)
    assert new is None
    assert coordinator.round.status == "failed" and coordinator.round.accepted == 2


# ---------------------------------------------------------------- record
def test_round_record_lists_every_sampled_client_with_status_and_reason():
    coordinator = _coordinator(**{"fraction-fit": 0.5, "min-fit-clients": 1})

    def mixed(instructions):
        first, second, third = sorted(instructions)
        claim = _honest(first, instructions[first])
        return {
            first: FitReply({**claim.metrics, BATCH_SIZE: 999}, 40, claim.weights),
            second: NoReply("failed", "hostile client raises"),
            third: NoReply("timed-out", "no reply within 20 s"),
        }

    instructions, _ = _round(coordinator, 1, replace=mixed)
    record = coordinator.close_round(0.3, 0.9)
    first, second, third = sorted(instructions)
    assert [c.id for c in record.clients] == sorted(instructions)
    by_id = {c.id: c for c in record.clients}
    assert by_id[first].status == "refused" and "batch-size" in by_id[first].reason
    assert by_id[first].reported_batch_size == 999
    assert by_id[first].batch_size == instructions[first].batch_size
    assert (by_id[second].status, by_id[second].reason) == ("failed", "hostile client raises")
    assert (by_id[third].status, by_id[third].reason) == ("timed-out", "no reply within 20 s")
    assert (record.loss, record.accuracy) == (0.3, 0.9)
    assert coordinator.round is None


def test_honest_clients_record_ok_without_a_reason():
    coordinator = _coordinator()
    _round(coordinator, 1)
    record = coordinator.close_round(0.3, 0.9)
    assert {(c.status, c.reason) for c in record.clients} == {("ok", None)}
    assert all(c.num_examples == 40 for c in record.clients)


# ------------------------------------------------------------ checkpoint
@pytest.mark.parametrize(
    "partial_rules",
    [{}, {"refresh-stale": 1.0, "aggregate-share": 0.5, "batch-step": 0.2}],
    ids=["defaults", "partial-participation-rules"],
)
def test_restored_coordinator_continues_like_an_uninterrupted_one(partial_rules):
    settings = {"fraction-fit": 0.5, "fraction-evaluate": 0.5, **partial_rules}
    original, weights = _coordinator(**settings), GLOBAL
    for server_round in (1, 2):
        _, weights = _round(original, server_round, weights)
        original.evaluation_sample()
        original.close_round(None, None)
    resumed = _coordinator(**settings)
    resumed.restore(json.loads(json.dumps(original.state())), original.previous_weights)
    for server_round in (3, 4):
        assigned = [_round(c, server_round, weights)[0] for c in (original, resumed)]
        assert assigned[0] == assigned[1]
        assert original.evaluation_sample() == resumed.evaluation_sample()
        assert [original.policy.assignment(c) for c in CAPACITY] == [
            resumed.policy.assignment(c) for c in CAPACITY
        ]
        original.close_round(None, None)
        resumed.close_round(None, None)


# ------------------------------------------------------------ evaluation
def test_no_federated_evaluation_at_fraction_evaluate_zero():
    assert _coordinator(**{"fraction-evaluate": 0.0}).evaluation_sample() == []


def test_fraction_evaluate_half_samples_half_the_clients():
    chosen = _coordinator(**{"fraction-evaluate": 0.5}).evaluation_sample()
    assert len(chosen) == len(set(chosen)) == len(CAPACITY) // 2
    assert set(chosen) <= set(CAPACITY)


def test_federated_evaluation_is_the_weighted_mean_of_the_honest_replies():
    coordinator = _coordinator(**{"fraction-evaluate": 0.5})
    coordinator.start_fit(1, GLOBAL)
    replies = {
        0: (0.4, EvaluateReport(0, 0.4, 0.9).to_metrics(), 10),
        1: (1.0, EvaluateReport(1, 1.0, 0.6).to_metrics(), 30),
        2: (math.nan, EvaluateReport(2, math.nan, 5.0).to_metrics(), 50),
    }
    assert coordinator.finish_evaluation(replies) == pytest.approx((0.85, 0.675))
    record = coordinator.close_round(None, None)
    assert record.federated_loss == pytest.approx(0.85)
    assert record.federated_accuracy == pytest.approx(0.675)
    assert record.federated_clients == 2
    assert list(record.evaluation_refused) == ["2"]


# -------------------------------------------------------------- rollback
def test_round_whose_clients_lost_ground_rolls_back_to_the_previous_model():
    coordinator = _coordinator(**{"rollback-tolerance": 0.1})
    _, first = _round(coordinator, 1, loss_before=1.0)
    coordinator.close_round(None, None)
    _, second = _round(coordinator, 2, first, loss_before=1.2)
    assert coordinator.round.status == "rolled-back"
    assert all(np.array_equal(a, b) for a, b in zip(second, GLOBAL, strict=True))


def test_rise_within_rollback_tolerance_keeps_the_new_model():
    coordinator = _coordinator(**{"rollback-tolerance": 0.1})
    _, first = _round(coordinator, 1, loss_before=1.0)
    coordinator.close_round(None, None)
    _, second = _round(coordinator, 2, first, loss_before=1.05)
    assert coordinator.round.status == "ok"
    assert not any(np.array_equal(a, b) for a, b in zip(second, GLOBAL, strict=True))


def test_no_rollback_when_rollback_is_off():
    coordinator = _coordinator(rollback=False)
    _, first = _round(coordinator, 1, loss_before=1.0)
    coordinator.close_round(None, None)
    _round(coordinator, 2, first, loss_before=5.0)
    assert coordinator.round.status == "ok"


def test_a_search_request_carries_only_grid_points_inside_the_space():
    coordinator = _coordinator(init="search")  # lr-grid reaches 1e-6; lr-min here is 1e-4
    instructions = coordinator.start_fit(1, [np.zeros(1)])
    config = coordinator.config
    for instruction in instructions.values():
        assert instruction.lr_grid == (1e-1, 1e-2, 1e-3, 1e-4)
        assert instruction.batch_grid == (16, 32, 64)
        assert all(config.lr_min <= lr <= config.lr_max for lr in instruction.lr_grid)
        assert all(config.batch_min <= b <= config.batch_max for b in instruction.batch_grid)


# ------------------------------------------------- partial participation
def test_aggregate_share_averages_only_the_updates_whose_fits_improved_most():
    coordinator = _coordinator(**{"aggregate-share": 0.5})
    instructions = coordinator.start_fit(1, GLOBAL)
    improvement = {cid: 0.1 * (cid + 1) for cid in instructions}  # 5 improves most
    replies = {}
    for cid, instruction in instructions.items():
        reply = _honest(cid, instruction)
        metrics = dict(reply.metrics)
        metrics[LOSS_FIELDS["local_loss_after"]] = 1.0 - improvement[cid]
        # Each update moves the model by 0.01 x its client's id.
        moved = [w + np.float32(0.01 * cid) for w in GLOBAL]
        replies[cid] = FitReply(metrics, reply.num_examples, moved)
    new_weights = coordinator.finish_fit(replies)
    assert coordinator.round.accepted == 6 and coordinator.round.aggregated == 3
    # The best half is clients 3, 4 and 5, with equal examples: their mean id is 4.
    np.testing.assert_allclose(new_weights[1], GLOBAL[1] + 0.04, rtol=1e-5)


def test_aggregate_clip_shortens_the_update_that_moves_furthest_to_the_median_move():
    coordinator = _coordinator(**{"aggregate-clip": 1.0, "max-update-norm": 10.0})
    instructions = coordinator.start_fit(1, GLOBAL)
    replies = {}
    for cid, instruction in instructions.items():
        reply = _honest(cid, instruction)
        # Five clients move the bias by 0.01; client 5 moves it 100 times as far.
        step = 1.0 if cid == 5 else 0.01
        moved = [GLOBAL[0], GLOBAL[1] + np.float32(step)]
        replies[cid] = FitReply(reply.metrics, reply.num_examples, moved)
    new_weights = coordinator.finish_fit(replies)
    assert coordinator.round.aggregated == 6
    # Clipped, client 5 counts as one more move of 0.01: the mean stays 0.01.
    np.testing.assert_allclose(new_weights[1], GLOBAL[1] + 0.01, rtol=1e-5)
    unclipped = _coordinator(**{"max-update-norm": 10.0})
    unclipped.start_fit(1, GLOBAL)
    np.testing.assert_allclose(
        unclipped.finish_fit(replies)[1], GLOBAL[1] + (5 * 0.01 + 1.0) / 6, rtol=1e-5
    )


def test_aggregate_share_one_averages_every_accepted_update():
    coordinator = _coordinator()
    _round(coordinator, 1)
    assert coordinator.round.aggregated == coordinator.round.accepted == 6


def test_refreshed_clients_are_marked_in_the_round_record():
    coordinator = _coordinator(**{"fraction-fit": 0.5, "refresh-stale": 1.0})
    first, _ = _round(coordinator, 1)
    coordinator.close_round(None, None)
    second, _ = _round(coordinator, 2)
    marked = {c.id for c in coordinator.round.clients if c.refreshed}
    assert marked == set(second) - set(first)


# ------------------------------------------------------------- federated fitness
FEDERATED = {"fitness": "federated", "fitness-evaluators": 6, "dbscan-eps": 0.3}


def _federated_round(coordinator, evaluate):
    """One fit round of honest clients, then every evaluator answers as ``evaluate`` says."""
    _round(coordinator, 1)
    requests = coordinator.candidate_requests()
    replies = {}
    for evaluator, (_instruction, models) in requests.items():
        losses = evaluate(evaluator, models)
        report = EvaluateReport(evaluator, losses[0], 0.5, tuple(losses))
        replies[evaluator] = (losses[0], report.to_metrics(), 40)
    return requests, coordinator.finish_candidates(replies)


def _distance_loss(target):
    """A loss that falls as the model nears ``target``: what an honest evaluator measures."""

    def evaluate(evaluator, models):
        distance = [
            sum(np.sum((m - t) ** 2) for m, t in zip(w, target, strict=True)) for w in models
        ]
        return [1.0 + float(d) for d in distance]

    return evaluate


def test_no_evaluator_receives_a_candidate_of_its_own_group():
    coordinator = _coordinator(**FEDERATED)
    _round(coordinator, 1)
    requests = coordinator.candidate_requests()
    groups = coordinator.pending.groups
    assert requests and len(groups) >= 2
    assert all(len(members) >= 2 for members in groups.values())
    for evaluator, (instruction, models) in requests.items():
        judged = coordinator.pending.plan[evaluator]
        assert all(evaluator not in groups[g] for g in judged)
        # The aggregate, the round's start, one model per judged group: each a full model.
        assert instruction.candidates == len(models) == 2 + len(judged)
        assert instruction.split == "local"
        assert all([a.shape for a in m] == [a.shape for a in GLOBAL] for m in models)


def test_the_group_whose_step_helps_the_others_scores_best():
    coordinator = _coordinator(**FEDERATED)
    target = [w + 0.05 for w in GLOBAL]
    _, weights = _federated_round(coordinator, _distance_loss(target))
    record = coordinator.round
    judged = [g for g in record.groups if g.contribution is not None]
    assert len(judged) >= 2
    best = max(judged, key=lambda g: g.contribution)
    scores = {c.id: c.score for c in record.clients}
    best_score = min(scores[c] for c in best.members)
    assert all(scores[c] >= best_score for c in scores)
    # aggregate=mean: every accepted update is averaged whatever the evaluators said.
    assert record.aggregated == record.accepted and weights is not None


def test_drop_harmful_leaves_out_a_group_whose_absence_lowers_the_loss():
    coordinator = _coordinator(**FEDERATED, aggregate="drop-harmful")
    _round(coordinator, 1)
    requests = coordinator.candidate_requests()
    groups = coordinator.pending.groups
    bad = sorted(groups)[0]
    bad_members = set(groups[bad])

    # The aggregate and the start at 1.0; the bad group's step alone raises the loss,
    # every other group's lowers it.
    def evaluate(evaluator, models):
        plan = coordinator.pending.plan[evaluator]
        return [1.0, 1.0, *(1.1 if g == bad else 0.9 for g in plan)]

    replies = {}
    for evaluator, (_instruction, models) in requests.items():
        losses = evaluate(evaluator, models)
        replies[evaluator] = (
            1.0,
            EvaluateReport(evaluator, 1.0, 0.5, tuple(losses)).to_metrics(),
            40,
        )
    weights = coordinator.finish_candidates(replies)
    record = coordinator.round
    assert [g.label for g in record.groups if g.left_out] == [bad]
    assert {c.id for c in record.clients if c.left_out} == bad_members
    assert record.aggregated == record.accepted - len(bad_members)
    assert weights is not None


def test_lying_or_malformed_evaluators_are_refused_and_named():
    coordinator = _coordinator(**FEDERATED)
    _round(coordinator, 1)
    requests = coordinator.candidate_requests()
    evaluators = sorted(requests)
    replies = {}
    for index, (evaluator, (_instruction, models)) in enumerate(sorted(requests.items())):
        losses = [1.0] * len(models)
        if index == 0:
            losses[-1] = math.inf
        if index == 1:
            losses = losses[:-1]
        metrics = EvaluateReport(evaluator, losses[0], 0.5, tuple(losses)).to_metrics()
        replies[evaluator] = (losses[0], metrics, 40)
    coordinator.finish_candidates(replies)
    refused = coordinator.round.evaluation_refused
    assert "candidate-loss" in refused[str(evaluators[0])]
    assert "candidate losses" in refused[str(evaluators[1])]
    assert coordinator.round.federated_clients == len(evaluators) - 2


def test_without_any_evaluation_the_round_keeps_every_update_and_ranks_by_own_loss():
    coordinator = _coordinator(**FEDERATED)
    _, aggregate = _round(coordinator, 1)
    assert coordinator.candidate_requests()
    weights = coordinator.finish_candidates({})
    record = coordinator.round
    assert record.federated_clients == 0 and record.aggregated == record.accepted
    for got, expected in zip(weights, aggregate, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert all(c.score is not None for c in record.clients)


def test_fedavg_averages_every_update_whatever_the_aggregate_keys_say():
    guarded = {"aggregate": "guarded", "aggregate-clip": 2.0, "aggregate-share": 0.5}
    fedavg = _coordinator(**{"strategy": "fedavg", **guarded})
    gcfl = _coordinator(**guarded)
    assert fedavg.rules == RoundRules()
    assert (gcfl.rules.aggregate, gcfl.rules.clip, gcfl.rules.share) == ("guarded", 2.0, 0.5)
