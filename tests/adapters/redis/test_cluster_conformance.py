"""The shared conformance suite against a real Redis Cluster (``?cluster=true``).

The session's cluster (``support.redis_cluster``: three primaries and three replicas on
loopback). Every check runs on a fresh prefix, whose keys all carry the hash
tag ``{prefix}``: the task-queue and state-store scripts, which build key names inside
Lua, run on the node serving that slot, and the message bus and the queue's "done"
events cross nodes (a publish on one node reaches subscribers on every node).

The default run keeps the core clauses and leaves out what the single-server suite
covers already on the same code, where a cluster adds nothing but time: the Hypothesis
state machines (a minute and more of random walks), the method-signature checks, and
the message bus's timing checks (a burst, a slow subscriber, a lull).
``DA_TEST_PROFILE=thorough`` runs them all.
"""

from __future__ import annotations

import os

import pytest
from support.redis_cluster import RedisCluster

from distributed_agents.conformance import BackendConformanceTests, Requirements

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


class TestRedisClusterConformance(BackendConformanceTests):
    # As on one server: deadlines are kept by the serving node's clock, over loopback.
    requirements = Requirements(timing_slack=0.05, short_timeout=0.3, delivery_timeout=2.0)

    @pytest.fixture
    def conformance_backend_url(self, redis_cluster: RedisCluster) -> str:
        return redis_cluster.url


_SINGLE_SERVER_ONLY = ("state_machine", "signatures", "burst_reaches_everyone", "slow_subscriber_does_not_block",
                       "iteration_survives_a_lull")

if os.environ.get("DA_TEST_PROFILE") != "thorough":
    for _name in [n for n in dir(TestRedisClusterConformance)
                  if n.startswith("test_") and any(part in n for part in _SINGLE_SERVER_ONLY)]:
        setattr(TestRedisClusterConformance, _name, None)  # not collected
