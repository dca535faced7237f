"""The shared conformance suite against a real Redis Cluster (``?cluster=true``).

One cluster for the module (``support.redis_cluster``: three primaries and three
replicas on loopback). Every check runs on a fresh prefix, whose keys all carry the hash
tag ``{prefix}``: the task-queue and state-store scripts, which build key names inside
Lua, run on the node serving that slot, and the message bus and the queue's "done"
events cross nodes (a publish on one node reaches subscribers on every node).

The default run leaves out the Hypothesis state machines (a minute and more of random
walks through the same adapter code the single-server suite walks already; the cluster
adds routing, which every other check exercises): ``DA_TEST_PROFILE=thorough`` runs them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support.redis_cluster import RedisCluster

from distributed_agents.conformance import BackendConformanceTests, Requirements

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    nodes = RedisCluster()
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.cleanup()


class TestRedisClusterConformance(BackendConformanceTests):
    # As on one server: deadlines are kept by the serving node's clock, over loopback.
    requirements = Requirements(timing_slack=0.05, short_timeout=0.3, delivery_timeout=2.0)

    @pytest.fixture
    def conformance_backend_url(self, redis_cluster: RedisCluster) -> str:
        return redis_cluster.url


if os.environ.get("DA_TEST_PROFILE") != "thorough":
    for _name in [n for n in dir(TestRedisClusterConformance) if n.startswith("test_") and "state_machine" in n]:
        setattr(TestRedisClusterConformance, _name, None)  # not collected
