"""The Flower adapter: partition-id keying, per-client FitIns, failures named, records."""

import logging
import math

import numpy as np
import pytest
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    GetPropertiesRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from gcfl.config import parse_run_config
from gcfl.protocol import EvaluateReport, FitReport, NodeInfo, fit_instruction_from_config
from gcfl.strategy.discovery import NoReplyError
from gcfl.strategy.flower_strategy import GeneticClusteredFedAvg, StrategySetupError
from gcfl.strategy.sampling import FederationSizeError

OK = Status(code=Code.OK, message="")
HOLDS = 100  # training examples each fake node says it holds


class FakeNode(ClientProxy):
    """A node known to Flower by a random node id, holding partition ``partition_id``."""

    def __init__(self, node_id, partition_id, num_partitions):
        super().__init__(str(node_id))
        self.partition_id = partition_id
        self.num_partitions = num_partitions

    def get_properties(self, ins, timeout, group_id):
        info = NodeInfo(self.partition_id, self.num_partitions, HOLDS)
        return GetPropertiesRes(status=OK, properties=info.to_properties())

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


def federation(num_nodes, seed=0):
    """Nodes with random node ids, registered in a shuffled order."""
    generator = np.random.default_rng(seed)
    node_ids = generator.choice(10**9, size=num_nodes, replace=False)
    manager = SimpleClientManager()
    for partition in generator.permutation(num_nodes):
        manager.register(FakeNode(int(node_ids[partition]), int(partition), num_nodes))
    return manager


GLOBAL = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]


def strategy(records=None, **overrides):
    config = parse_run_config({"probe-timeout": 5.0, **overrides})
    return GeneticClusteredFedAvg(
        config=config,
        initial_parameters=ndarrays_to_parameters(GLOBAL),
        evaluate_fn=lambda r, w, c: (0.5, {"accuracy": 0.75}),
        on_round_end=None if records is None else lambda record, _: records.append(record),
    )


def start(overrides=None, nodes=6, seed=0, records=None):
    manager = federation(nodes, seed)
    adapter = strategy(records, **(overrides or {}))
    adapter.initialize_parameters(manager)
    return adapter, manager


def fit_res(proxy, partition_id, ins, value=1.0, loss_before=2.0, **metric_overrides):
    """An honest reply to ``ins`` (the pair it was sent), with ``metric_overrides`` applied."""
    instruction = fit_instruction_from_config(ins.config)
    report = FitReport(
        client_id=partition_id,
        lr=instruction.lr,
        batch_size=instruction.batch_size,
        status="ok",
        train_loss=1.0,
        val_loss_before=loss_before,
        val_loss=1.0 / (partition_id + 1),
        val_accuracy=0.5,
        local_loss_before=2.0,
        local_loss_after=1.0 / (partition_id + 1),
    )
    metrics = {**report.to_metrics(), **metric_overrides}
    weights = [np.full(a.shape, value, np.float32) for a in GLOBAL]
    return proxy, FitRes(OK, ndarrays_to_parameters(weights), 10 * (partition_id + 1), metrics)


def one_round(adapter, manager, replies, failures=(), server_round=1):
    """configure_fit, the replies ``replies(proxy, partition, ins)`` gives, aggregate, evaluate."""
    instructions = adapter.configure_fit(server_round, ndarrays_to_parameters(GLOBAL), manager)
    results = [r for p, ins in instructions if (r := replies(p, p.partition_id, ins))]
    parameters, metrics = adapter.aggregate_fit(server_round, results, list(failures))
    adapter.evaluate(server_round, parameters or ndarrays_to_parameters(GLOBAL))
    return parameters, metrics


def test_state_is_keyed_by_partition_id_not_node_id():
    adapter, _ = start(nodes=6)
    assert sorted(adapter.federation.nodes) == list(range(6))
    for partition_id, (proxy, _) in adapter.federation.nodes.items():
        assert proxy.partition_id == partition_id


def test_each_client_gets_its_own_fit_config():
    adapter, manager = start(nodes=6)
    instructions = adapter.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager)
    assert len(instructions) == 6
    configs = [ins.config for _, ins in instructions]
    assert len({id(c) for c in configs}) == 6  # no shared, mutated dict
    for proxy, ins in instructions:
        pair = adapter.coordinator.policy.assignment(proxy.partition_id)
        assert ins.config["lr"] == pair.lr and ins.config["batch-size"] == pair.batch_size
    assert len({(c["lr"], c["batch-size"]) for c in configs}) > 1


def test_same_seed_same_sampling_and_assignments_whatever_the_node_ids():
    def round_one(node_seed):
        adapter, manager = start({"fraction-fit": 0.5}, nodes=10, seed=node_seed)
        instructions = adapter.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager)
        return [
            (p.partition_id, ins.config["lr"], ins.config["batch-size"]) for p, ins in instructions
        ]

    assert round_one(1) == round_one(2)
    assert len(round_one(1)) == 5


def test_fedavg_sends_the_baseline_pair_to_everyone():
    adapter, manager = start({"strategy": "fedavg"}, nodes=4)
    for _, ins in adapter.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager):
        assert (ins.config["lr"], ins.config["batch-size"]) == (1e-4, 32)


def test_aggregation_is_weighted_and_bad_clients_are_refused_alone(caplog):
    records = []
    adapter, manager = start(nodes=6, records=records)

    def replies(proxy, partition, ins):
        if partition == 2:
            return fit_res(proxy, partition, ins, value=100.0, lr="fast")  # malformed metric
        if partition == 3:
            return fit_res(proxy, partition, ins, value=np.nan)  # non-finite update
        if partition in (4, 5):
            return None  # 4 fails unattributed, 5 misses the deadline (gcfl's Grid names it)
        return fit_res(proxy, partition, ins, value=1.0 + 2 * partition)

    node_5 = int(adapter.federation.proxy(5).cid)
    failures = [RuntimeError("lost"), NoReplyError(node_5, "timed-out", "no reply within 20 s")]
    logging.getLogger("flwr").addHandler(caplog.handler)
    try:
        parameters, metrics = one_round(adapter, manager, replies, failures)
    finally:
        logging.getLogger("flwr").removeHandler(caplog.handler)
    # Named in the log, not only in results.json: who missed the round, and why.
    assert "round 1: client 5 timed-out: no reply within 20 s" in caplog.text
    weights = parameters_to_ndarrays(parameters)
    # Partitions 0 and 1 carry 10 and 20 examples: (1*10 + 3*20) / 30.
    np.testing.assert_allclose(weights[0], np.full((3, 2), 70 / 30), rtol=1e-6)
    assert metrics["accepted"] == 2
    (record,) = records
    clients = {c.id: c for c in record.clients}
    assert {cid: c.status for cid, c in clients.items()} == {
        0: "ok",
        1: "ok",
        2: "refused",
        3: "refused",
        4: "failed",
        5: "timed-out",
    }
    assert "malformed" in clients[2].reason and "non-finite" in clients[3].reason
    assert clients[5].reason == "no reply within 20 s"
    # Whoever failed keeps the pair it was assigned; nothing a client claimed is stored.
    for cid in (2, 3, 4, 5):
        assert (clients[cid].lr, clients[cid].batch_size) == (
            clients[cid].assigned_lr,
            clients[cid].assigned_batch_size,
        )


def test_accept_failures_off_keeps_the_global_model_when_a_client_failed():
    manager = federation(4)
    adapter = GeneticClusteredFedAvg(
        config=parse_run_config({"probe-timeout": 5.0}),
        initial_parameters=ndarrays_to_parameters(GLOBAL),
        accept_failures=False,
    )
    adapter.initialize_parameters(manager)

    def replies(proxy, partition, ins):
        return None if partition == 0 else fit_res(proxy, partition, ins)

    parameters, metrics = one_round(adapter, manager, replies)
    assert parameters is None and metrics["accepted"] == 3


def test_round_with_too_few_updates_keeps_the_global_model():
    records = []
    adapter, manager = start({"min-fit-clients": 3}, nodes=4, records=records)

    def replies(proxy, partition, ins):
        return fit_res(proxy, partition, ins) if partition == 0 else None

    parameters, _ = one_round(adapter, manager, replies)
    assert parameters is None
    assert records[0].status == "failed" and records[0].accepted == 1


def test_client_reporting_another_id_is_refused():
    records = []
    adapter, manager = start(nodes=3, records=records)

    def replies(proxy, partition, ins):
        return fit_res(proxy, 99 if partition == 0 else partition, ins)

    one_round(adapter, manager, replies)
    first = records[0].clients[0]
    assert first.status == "refused" and "client-id" in first.reason


def test_round_record_reaches_the_callback_once_evaluated():
    records = []
    adapter, manager = start(nodes=4, records=records)
    one_round(adapter, manager, fit_res)
    (record,) = records
    assert record.round == 1 and record.accuracy == 0.75 and record.loss == 0.5
    assert [c.id for c in record.clients] == [0, 1, 2, 3]
    assert all(isinstance(c.cluster, int) for c in record.clients)
    assert all(math.isfinite(c.lr) for c in record.clients)
    assert record.to_dict()["clients"][0]["id"] == 0  # results.json's form


def test_federated_evaluation_samples_clients_and_weights_their_reports():
    records = []
    adapter, manager = start({"fraction-evaluate": 0.5}, nodes=6, records=records)
    instructions = adapter.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager)
    results = [fit_res(p, p.partition_id, ins) for p, ins in instructions]
    parameters, _ = adapter.aggregate_fit(1, results, [])
    adapter.evaluate(1, parameters)
    assert records == []  # the round closes once its federated evaluation is in
    asked = adapter.configure_evaluate(1, parameters, manager)
    assert len(asked) == 3
    replies = []
    for index, (proxy, _) in enumerate(asked):
        report = EvaluateReport(proxy.partition_id, 1.0 + index, 0.5 + 0.1 * index)
        examples = 10 if index < 2 else 0  # the third claims no examples: refused
        replies.append((proxy, EvaluateRes(OK, report.loss, examples, report.to_metrics())))
    loss, metrics = adapter.aggregate_evaluate(1, replies, [])
    (record,) = records
    assert loss == pytest.approx(1.5) and metrics["accuracy"] == pytest.approx(0.55)
    assert record.federated_loss == pytest.approx(1.5) and record.federated_clients == 2
    assert list(record.evaluation_refused) == [str(asked[2][0].partition_id)]


def test_no_federated_evaluation_at_fraction_evaluate_zero():
    records = []
    adapter, manager = start(nodes=3, records=records)
    one_round(adapter, manager, fit_res)
    assert adapter.configure_evaluate(1, ndarrays_to_parameters(GLOBAL), manager) == []
    assert records[0].federated_loss is None


@pytest.mark.parametrize(
    ("overrides", "nodes", "named"),
    [
        ({}, 2, "elite"),  # 2 sampled, elite 2: nothing would evolve
        ({"min-fit-clients": 5}, 4, "min-fit-clients"),
        ({"fraction-fit": 0.1}, 20, "elite"),
    ],
)
def test_too_small_federation_is_refused_at_start(overrides, nodes, named):
    # Through the adapter's own start, as Flower calls it: the check is part of round 0.
    manager = SimpleClientManager()
    for partition in range(nodes):
        manager.register(FakeNode(partition + 1, partition, nodes))
    adapter = strategy(**overrides)
    with pytest.raises(FederationSizeError, match=named):
        adapter.initialize_parameters(manager)
    assert adapter.coordinator is None  # nothing was set up for a run that cannot work


def test_missing_supernodes_time_out_with_a_clear_error():
    manager = SimpleClientManager()
    manager.register(FakeNode(123, 0, 3))  # num-partitions says 3, only one is up
    adapter = strategy(**{"probe-timeout": 1.0})
    with pytest.raises(StrategySetupError, match="1 of 3"):
        adapter.initialize_parameters(manager)


def test_duplicate_partition_ids_are_refused():
    manager = SimpleClientManager()
    manager.register(FakeNode(1, 0, 2))
    manager.register(FakeNode(2, 0, 2))
    with pytest.raises(StrategySetupError, match="partition-id 0"):
        strategy().initialize_parameters(manager)


ONES = [np.ones((3, 2), np.float32), np.ones(2, np.float32)]


def started_on(weights, overrides=None, nodes=5, records=None):
    manager = federation(nodes)
    config = parse_run_config({"probe-timeout": 5.0, **(overrides or {})})
    adapter = GeneticClusteredFedAvg(
        config=config,
        initial_parameters=ndarrays_to_parameters(weights),
        on_round_end=None if records is None else lambda record, _: records.append(record),
    )
    adapter.initialize_parameters(manager)
    return adapter, manager


def fit_round(adapter, manager, server_round, weights, value, loss_before):
    instructions = adapter.configure_fit(server_round, ndarrays_to_parameters(weights), manager)
    results = [
        fit_res(p, p.partition_id, ins, value=value, loss_before=loss_before)
        for p, ins in instructions
    ]
    parameters, metrics = adapter.aggregate_fit(server_round, results, [])
    adapter.evaluate(server_round, parameters)
    return parameters_to_ndarrays(parameters), metrics


def test_a_round_that_made_the_clients_loss_worse_is_rolled_back():
    records = []
    adapter, manager = started_on(ONES, records=records)
    first, _ = fit_round(adapter, manager, 1, ONES, value=1.1, loss_before=2.0)
    second, _ = fit_round(adapter, manager, 2, first, value=1.2, loss_before=1.5)
    # The model of round 2 looks worse to every client (2.3 > 1.5 * 1.1): back to round 1's.
    third, metrics = fit_round(adapter, manager, 3, second, value=9.0, loss_before=2.3)
    np.testing.assert_allclose(third[0], first[0])
    assert records[2].status == "rolled-back" and metrics["accepted"] == 0
    # A rise within the tolerance is kept.
    fourth, _ = fit_round(adapter, manager, 4, third, value=1.3, loss_before=1.5)
    fifth, _ = fit_round(adapter, manager, 5, fourth, value=1.4, loss_before=1.6)
    np.testing.assert_allclose(fifth[0], 1.4, rtol=1e-6)
    assert records[4].status == "ok"


def test_rollback_off_keeps_every_aggregate():
    adapter, manager = started_on(ONES, {"rollback": False})
    first, _ = fit_round(adapter, manager, 1, ONES, value=1.1, loss_before=2.0)
    second, _ = fit_round(adapter, manager, 2, first, value=1.2, loss_before=9.0)
    np.testing.assert_allclose(second[0], 1.2, rtol=1e-6)
