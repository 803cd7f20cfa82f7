"""The contract between server and clients: every message round-trips, and every malformed
one is refused with a ProtocolError that names the key at fault."""

import math
import re
from pathlib import Path

import pytest

from gcfl import protocol
from gcfl.protocol import (
    ACCURACY,
    BATCH_GRID,
    BATCH_SIZE,
    CLIENT_ID,
    LOSS_FIELDS,
    LR,
    LR_GRID,
    NUM_EXAMPLES,
    NUM_PARTITIONS,
    PARTITION_ID,
    PROTOCOL_VERSION,
    ROUND,
    SEARCH,
    STATUS,
    VERSION,
    EvaluateInstruction,
    EvaluateReport,
    FitReport,
    NodeInfo,
    PropertiesRequest,
    ProtocolError,
    SearchInstruction,
    TrainInstruction,
    fit_instruction_from_config,
)

ROOT = Path(__file__).resolve().parents[1]


def _report(**changes) -> FitReport:
    fields = dict(
        client_id=3,
        lr=0.0123,
        batch_size=32,
        status="ok",
        train_loss=0.5,
        first_loss=1.5,
        val_loss_before=1.2,
        val_loss=0.7,
        val_accuracy=0.8,
        local_loss_before=1.1,
        local_loss_after=0.6,
    )
    return FitReport(**{**fields, **changes})


def _config(**changes) -> dict:
    return {**TrainInstruction(4, 0.0123, 32).to_config(), **changes}


def _metrics(**changes) -> dict:
    return {**_report().to_metrics(), **changes}


def _properties(**changes) -> dict:
    return {**NodeInfo(2, 5, 100).to_properties(), **changes}


def _refused(key: str):
    return pytest.raises(ProtocolError, match=re.escape(key))


def _without(message: dict, key: str) -> dict:
    return {k: v for k, v in message.items() if k != key}


# ---------------------------------------------------------------- round trips
def test_fit_instruction_round_trips_through_its_config():
    instruction = TrainInstruction(4, 0.0123, 32)
    assert fit_instruction_from_config(instruction.to_config()) == instruction


def test_search_instruction_carries_the_grids_and_round_trips_them():
    instruction = SearchInstruction(1, lr_grid=(0.1, 1e-3, 3.5e-5), batch_grid=(16, 64))
    config = instruction.to_config()
    assert config[SEARCH] is True and LR not in config and BATCH_SIZE not in config
    back = fit_instruction_from_config(config)
    assert back == instruction and isinstance(back, SearchInstruction)


def test_fit_report_round_trips_through_its_metrics():
    report = _report()
    assert FitReport.from_metrics(report.to_metrics()) == report


def test_diverged_fit_report_round_trips():
    report = _report(status="diverged", val_loss=math.nan)
    back = FitReport.from_metrics(report.to_metrics())
    assert back.status == "diverged" and back.val_loss_before == report.val_loss_before


def test_evaluate_report_round_trips_through_loss_and_metrics():
    report = EvaluateReport(3, 0.42, 0.9)
    assert EvaluateReport.from_reply(report.loss, report.to_metrics()) == report


def test_node_info_round_trips_through_its_properties():
    info = NodeInfo(2, 5, 100)
    assert NodeInfo.from_properties(info.to_properties()) == info


# ------------------------------------------------------------------ NaN, inf
def test_nan_losses_survive_a_fit_report_round_trip():
    back = FitReport.from_metrics(_report(val_loss=math.nan, train_loss=math.nan).to_metrics())
    assert math.isnan(back.val_loss) and math.isnan(back.train_loss)
    assert back.val_loss_before == 1.2


def test_infinite_loss_is_sent_as_nan():
    metrics = _report(val_loss=math.inf, first_loss=-math.inf).to_metrics()
    assert math.isnan(metrics[LOSS_FIELDS["val_loss"]])
    assert math.isnan(metrics[LOSS_FIELDS["first_loss"]])


# ---------------------------------------------------------------- missing keys
@pytest.mark.parametrize("key", [VERSION, ROUND, LR, BATCH_SIZE])
def test_fit_instruction_missing_a_key_names_it(key):
    with _refused(key):
        fit_instruction_from_config(_without(_config(), key))


@pytest.mark.parametrize("key", [LR_GRID, BATCH_GRID])
def test_search_instruction_missing_a_grid_names_it(key):
    config = SearchInstruction(1, lr_grid=(0.1, 0.01), batch_grid=(16, 32)).to_config()
    with _refused(key):
        fit_instruction_from_config(_without(config, key))


@pytest.mark.parametrize("key", list(_report().to_metrics()))
def test_fit_report_missing_a_key_names_it(key):
    with _refused(key):
        FitReport.from_metrics(_without(_metrics(), key))


@pytest.mark.parametrize("key", [VERSION, CLIENT_ID, ACCURACY])
def test_evaluate_report_missing_a_key_names_it(key):
    metrics = EvaluateReport(3, 0.4, 0.9).to_metrics()
    with _refused(key):
        EvaluateReport.from_reply(0.4, _without(metrics, key))


@pytest.mark.parametrize("key", [VERSION, PARTITION_ID, NUM_PARTITIONS, NUM_EXAMPLES])
def test_node_info_missing_a_key_names_it(key):
    with _refused(key):
        NodeInfo.from_properties(_without(_properties(), key))


# ----------------------------------------------------------------- wrong types
def test_str_lr_in_an_instruction_is_refused():
    with _refused(LR):
        fit_instruction_from_config(_config(**{LR: "0.01"}))


def test_str_lr_in_a_report_is_refused():
    with _refused(LR):
        FitReport.from_metrics(_metrics(**{LR: "fast"}))


def test_float_batch_size_is_refused():
    with _refused(BATCH_SIZE):
        fit_instruction_from_config(_config(**{BATCH_SIZE: 32.0}))
    with _refused(BATCH_SIZE):
        FitReport.from_metrics(_metrics(**{BATCH_SIZE: 32.0}))


@pytest.mark.parametrize(
    ("parse", "message", "key"),
    [
        (fit_instruction_from_config, _config(), ROUND),
        (fit_instruction_from_config, _config(), BATCH_SIZE),
        (FitReport.from_metrics, _metrics(), CLIENT_ID),
        (FitReport.from_metrics, _metrics(), BATCH_SIZE),
        (NodeInfo.from_properties, _properties(), PARTITION_ID),
        (NodeInfo.from_properties, _properties(), NUM_EXAMPLES),
    ],
)
def test_bool_for_an_integer_field_is_refused(parse, message, key):
    with _refused(key):
        parse({**message, key: True})


def test_bool_loss_is_refused():
    key = LOSS_FIELDS["val_loss"]
    with _refused(key):
        FitReport.from_metrics(_metrics(**{key: True}))


def test_non_numeric_evaluate_loss_is_refused():
    with _refused("loss"):
        EvaluateReport.from_reply("low", EvaluateReport(3, 0.4, 0.9).to_metrics())


# ------------------------------------------------------------------- version
@pytest.mark.parametrize("version", [PROTOCOL_VERSION + 1, 0, "1", None])
def test_wrong_protocol_version_is_refused_everywhere(version):
    for parse, message in [
        (fit_instruction_from_config, _config()),
        (FitReport.from_metrics, _metrics()),
        (NodeInfo.from_properties, _properties()),
        (lambda m: EvaluateReport.from_reply(0.4, m), EvaluateReport(3, 0.4, 0.9).to_metrics()),
    ]:
        with _refused(VERSION):
            parse({**message, VERSION: version})


# ---------------------------------------------------------------- fit values
@pytest.mark.parametrize("status", ["great", "OK", "", None, 1])
def test_unknown_fit_status_is_refused(status):
    with _refused(STATUS):
        FitReport.from_metrics(_metrics(**{STATUS: status}))


@pytest.mark.parametrize("lr", [0.0, -0.01, math.nan, math.inf])
def test_instruction_with_a_non_positive_or_non_finite_lr_is_refused(lr):
    with _refused(LR):
        fit_instruction_from_config(_config(**{LR: lr}))


@pytest.mark.parametrize("batch_size", [0, -32])
def test_instruction_with_a_non_positive_batch_size_is_refused(batch_size):
    with _refused(BATCH_SIZE):
        fit_instruction_from_config(_config(**{BATCH_SIZE: batch_size}))


def test_search_instruction_with_a_garbage_grid_names_it():
    config = SearchInstruction(1, lr_grid=(0.1, 0.01), batch_grid=(16, 32)).to_config()
    with _refused(BATCH_GRID):
        fit_instruction_from_config({**config, BATCH_GRID: "16,big"})


# ----------------------------------------------------------------- node info
@pytest.mark.parametrize("partition_id", [-1, 5, 6])
def test_node_info_partition_id_outside_the_federation_is_refused(partition_id):
    with _refused(PARTITION_ID):
        NodeInfo.from_properties(_properties(**{PARTITION_ID: partition_id}))


@pytest.mark.parametrize("num_examples", [0, -3])
def test_node_info_without_examples_is_refused(num_examples):
    with _refused(NUM_EXAMPLES):
        NodeInfo.from_properties(_properties(**{NUM_EXAMPLES: num_examples}))


# ------------------------------------------------------- one spelling per key
FIT_SCHEMA_KEYS = sorted({LR, BATCH_SIZE, STATUS, CLIENT_ID, ROUND, SEARCH, VERSION, ACCURACY})
FIT_SCHEMA_KEYS += sorted(LOSS_FIELDS.values())
# Plain words are also attribute names, run-config values ("init": "search") and
# the names of the server's own evaluation metrics; they are keys only where a
# mapping is built or read with them.
WORD_KEYS = {key for key in FIT_SCHEMA_KEYS if re.fullmatch(r"[a-z]+", key)}
# gcfl.server.evaluation's metrics (the server's test set), not a client's message.
NOT_PROTOCOL = {("gcfl/strategy/flower_strategy.py", ACCURACY)}


def _spellings(text: str, key: str) -> list[str]:
    literal = rf"""(?:"{re.escape(key)}"|'{re.escape(key)}')"""
    if key in WORD_KEYS:
        subscript = rf"\[\s*{literal}\s*\]|\.(?:get|pop|setdefault)\(\s*{literal}"
        pattern = rf"(?:{subscript}|(?:^|[{{,(])\s*{literal}\s*:)"
    else:
        pattern = literal
    return [line.strip() for line in text.splitlines() if re.search(pattern, line)]


def test_every_key_a_message_carries_is_a_protocol_constant():
    # The keys the types really emit, not the constants compared with themselves.
    constants = {value for value in vars(protocol).values() if isinstance(value, str)}
    constants |= set(protocol.LOSS_FIELDS.values())
    emitted = set(TrainInstruction(1, 1e-3, 32).to_config())
    emitted |= set(SearchInstruction(1, lr_grid=(1e-3, 1e-2), batch_grid=(16, 32)).to_config())
    emitted |= set(FitReport(1, 1e-3, 32, "ok").to_metrics())
    emitted |= set(EvaluateInstruction(1, 2, "local").to_config())
    losses = {key for key in EvaluateReport(1, 0.4, 0.9, (0.4, 0.5)).to_metrics()}
    emitted |= {key for key in losses if not key.startswith(protocol.CANDIDATE_LOSS)}
    emitted |= set(NodeInfo(0, 2, 10).to_properties())
    emitted |= set(PropertiesRequest().to_config())
    assert emitted <= constants, emitted - constants
    assert {key for key in losses if key.startswith(protocol.CANDIDATE_LOSS)} == {
        f"{protocol.CANDIDATE_LOSS}0",
        f"{protocol.CANDIDATE_LOSS}1",
    }


def test_no_protocol_key_is_spelled_outside_the_protocol_module():
    # Every module that builds or reads a client's message.
    sources = sorted((ROOT / "gcfl" / "strategy").glob("*.py"))
    sources += sorted((ROOT / "gcfl" / "client").glob("*.py"))
    sources += sorted((ROOT / "gcfl" / "worker").glob("*.py"))  # the fit request forwards them
    sources += [ROOT / "gcfl" / "testing" / "hostile.py", ROOT / "gcfl" / "server" / "grid.py"]
    found = []
    for path in sources:
        name = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        for key in FIT_SCHEMA_KEYS:
            if (name, key) not in NOT_PROTOCOL:
                found += [f"{name}: {key!r} in {line}" for line in _spellings(text, key)]
    assert not found, "use gcfl.protocol's constants:\n" + "\n".join(found)


def test_an_evaluate_instruction_round_trips():
    for instruction in (EvaluateInstruction(4), EvaluateInstruction(2, 5, "local")):
        assert EvaluateInstruction.from_config(instruction.to_config()) == instruction


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"candidates": 0}, "candidates 0"),
        ({"candidates": 10**6}, "candidates 1000000"),
        ({"candidates": "3"}, "not an integer"),
        ({"eval-split": "test"}, "eval-split"),
        ({"gcfl-protocol": 1}, "gcfl-protocol"),
    ],
)
def test_a_bad_evaluate_instruction_is_refused_naming_the_key(change, phrase):
    config = {**EvaluateInstruction(2, 3, "local").to_config(), **change}
    with pytest.raises(ProtocolError, match=phrase):
        EvaluateInstruction.from_config(config)


def test_a_candidate_report_round_trips_every_loss():
    report = EvaluateReport(3, 0.4, 0.9, (0.4, 0.5, 0.3))
    assert EvaluateReport.from_reply(0.4, report.to_metrics()) == report


def test_a_candidate_report_missing_a_loss_is_refused():
    metrics = EvaluateReport(3, 0.4, 0.9, (0.4, 0.5, 0.3)).to_metrics()
    del metrics["candidate-loss-2"]
    with pytest.raises(ProtocolError, match="candidate-loss-2 is missing"):
        EvaluateReport.from_reply(0.4, metrics)
