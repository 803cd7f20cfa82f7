"""Before round 1: ask every SuperNode which partition it holds and how many examples."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

from flwr.common import GetPropertiesIns
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from gcfl.names import NoReplyOutcome
from gcfl.protocol import NodeInfo, PropertiesRequest, ProtocolError
from gcfl.strategy.coordinator import NoReply, StrategySetupError


class NoReplyError(Exception):
    """A node's message got no usable reply: ``outcome`` is "timed-out" or "failed"."""

    def __init__(self, node_id: int, outcome: NoReplyOutcome, reason: str) -> None:
        super().__init__(f"node {node_id}: {outcome}: {reason}")
        self.node_id, self.outcome, self.reason = node_id, outcome, reason


@dataclass
class Federation:
    """The nodes by partition id, and the way back from Flower's node ids."""

    nodes: dict[int, tuple[ClientProxy, NodeInfo]]
    partition_of: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.partition_of = {proxy.cid: cid for cid, (proxy, _) in self.nodes.items()}

    def proxy(self, partition_id: int) -> ClientProxy:
        return self.nodes[partition_id][0]

    @property
    def capacity(self) -> dict[int, int]:
        """Training examples each node said it holds."""
        return {cid: info.num_examples for cid, (_, info) in self.nodes.items()}

    def replies(self, results: list[tuple[ClientProxy, Any]]) -> dict[int, Any]:
        """Replies keyed by partition id; any from an unknown node is dropped."""
        return {self.partition_of[p.cid]: res for p, res in results if p.cid in self.partition_of}

    def failures(self, failures: list[Any]) -> dict[int, NoReply]:
        """Failures attributed to a node (by gcfl's Grid, or a reply's status), by partition."""
        attributed: dict[int, NoReply] = {}
        for failure in failures:
            if isinstance(failure, NoReplyError):
                node, no_reply = str(failure.node_id), NoReply(failure.outcome, failure.reason)
            elif isinstance(failure, tuple):
                node = failure[0].cid
                no_reply = NoReply("failed", f"status {failure[1].status.message!r}")
            else:
                node, no_reply = "", NoReply("failed", str(failure))
            if node in self.partition_of:
                attributed[self.partition_of[node]] = no_reply
            else:
                log(WARNING, "gcfl: a client failed: %s", failure)
        return attributed


def discover_partitions(client_manager: ClientManager, timeout: float) -> Federation:
    """Ask every node for its :class:`NodeInfo` until all ``num-partitions`` have answered.

    Raises :class:`StrategySetupError` on duplicate ids, disagreeing counts, or
    when not every partition has answered within ``timeout`` seconds. A node
    whose answer breaks the protocol is asked again on the next poll and, if it
    never answers properly, named in the timeout's error.
    """
    deadline = time.monotonic() + timeout
    probed: set[str] = set()
    nodes: dict[int, tuple[ClientProxy, NodeInfo]] = {}
    expected: int | None = None
    with ThreadPoolExecutor(max_workers=16) as pool:
        while True:
            fresh = [p for p in client_manager.all().values() if p.cid not in probed]
            answers = pool.map(_probe, fresh, [max(1.0, deadline - time.monotonic())] * len(fresh))
            for proxy, info in zip(fresh, answers, strict=True):
                if info is None:
                    continue  # asked again on the next poll
                probed.add(proxy.cid)
                if info.partition_id in nodes:
                    raise StrategySetupError(
                        f"two SuperNodes report partition-id {info.partition_id}; give each "
                        "node a distinct partition-id in its --node-config"
                    )
                if expected is not None and info.num_partitions != expected:
                    raise StrategySetupError(
                        f"SuperNodes disagree on num-partitions ({expected} vs "
                        f"{info.num_partitions})"
                    )
                expected = info.num_partitions
                nodes[info.partition_id] = (proxy, info)
            if expected is not None and len(nodes) >= expected:
                return Federation(dict(sorted(nodes.items())))
            if time.monotonic() > deadline:
                raise StrategySetupError(
                    f"only {len(nodes)} of {expected if expected else '?'} SuperNodes "
                    f"answered within probe-timeout={timeout:g}s; start them all or raise "
                    "probe-timeout"
                )
            time.sleep(0.5)


def _probe(proxy: ClientProxy, timeout: float) -> NodeInfo | None:
    try:
        request = GetPropertiesIns(config=PropertiesRequest().to_config())
        res = proxy.get_properties(request, timeout=timeout, group_id=0)
        return NodeInfo.from_properties(res.properties)
    except ProtocolError as error:
        log(WARNING, "gcfl: node %s described itself wrongly: %s", proxy.cid, error)
    except Exception as error:  # a node that cannot answer is retried on the next poll
        log(WARNING, "gcfl: node %s did not report its partition id: %s", proxy.cid, error)
    return None
