"""The MessageBus state machines: subscribe, publish from several publishers, unsubscribe vs ``BusModel``.

Publishers and subscriptions are spread over two connections on one prefix (where the
engine shares a prefix). Every message names its publisher and that publisher's
sequence number, so each subscription's deliveries can be checked message by message:
after every step each open subscription's buffered messages are read (without waiting)
and each must be the next one the model owes it from that publisher; a closed one must
yield nothing. The ``settle`` rule waits (up to ``delivery_timeout``) until everything
owed has arrived, so a lost message is caught too.

Two checks share the machine: one on plain channels only, one that also subscribes to
``*``/``>`` patterns (skipped for a backend without ``pattern_subscriptions``).
"""

from __future__ import annotations

from typing import ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import ContractViolation, expect
from distributed_agents.conformance.context import CheckContext, monotonic
from distributed_agents.conformance.machine_base import BackendMachine, run_machine
from distributed_agents.conformance.models import BusModel, channel_matches
from distributed_agents.core.ports.message_bus import BusMessage, MessageBus, Subscription

CHANNELS = ("ev.a", "ev.b", "ev.a.x", "ev.b.x", "other.a")
PATTERNS = ("ev.*", "ev.>", "*.a", "ev.a.>", "ev.*.x", ">")
PUBLISHERS = ("p1", "p2", "p3")


class MessageBusMachine(BackendMachine):
    """Backend and ``BusModel`` side by side; ``patterns`` says whether to subscribe to patterns."""

    patterns: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.buses: list[MessageBus] = [self.backend.message_bus, self.open_peer().message_bus]
        self.model = BusModel()
        self.subs: list[Subscription] = []

    def _bus(self, pick: int) -> MessageBus:
        return self.buses[pick % len(self.buses)]

    # -- rules ---------------------------------------------------------------------------

    @rule(data=st.data(), connection=st.integers(0, 1))
    def subscribe(self, data: st.DataObject, connection: int) -> None:
        pattern = data.draw(st.sampled_from(CHANNELS + self.patterns), label="pattern")
        self.subs.append(self.call(self._bus(connection).subscribe(pattern)))
        self.model.subscribe(pattern)

    @rule(publisher=st.sampled_from(PUBLISHERS), channel=st.sampled_from(CHANNELS), count=st.integers(1, 3))
    def publish(self, publisher: str, channel: str, count: int) -> None:
        # p1 and p3 share the first connection, p2 has the second.
        bus = self._bus(PUBLISHERS.index(publisher) % 2)
        for _ in range(count):
            seq = self.model.publish(publisher, channel)
            self.call(bus.publish(channel, {"pub": publisher, "seq": seq, "via": channel}))

    @precondition(lambda self: any(sub.open for sub in self.model.subscriptions))
    @rule(pick=st.integers(0, 1000))
    def unsubscribe(self, pick: int) -> None:
        open_ones = [i for i, sub in enumerate(self.model.subscriptions) if sub.open]
        index = open_ones[pick % len(open_ones)]
        self.call(self.subs[index].close())
        self.model.close(index)

    # No precondition on what is still owed: that depends on which messages the
    # invariant happened to receive already (network timing), and Hypothesis needs the
    # set of enabled rules to depend only on its own choices.
    @rule()
    def settle(self) -> None:
        """Wait until every open subscription got all it is owed (a no-op when nothing is)."""
        give_up = monotonic() + self.context.requirements.delivery_timeout
        for index, sub in enumerate(self.model.subscriptions):
            while sub.open and sub.pending():
                message = self.call(self.subs[index].get(timeout=max(0.0, give_up - monotonic())))
                if message is None:
                    owed = {p: seqs for p, seqs in sub.owed.items() if seqs}
                    clause = "message_bus.fanout" if sub.pattern in CHANNELS else "message_bus.patterns"
                    raise ContractViolation(clause, f"subscription {index} to {sub.pattern!r} still lacks {owed} "
                                            f"(publisher: sequence numbers) after {self.context.requirements.delivery_timeout}s")
                self._receive(index, message)

    # -- comparison after every step -------------------------------------------------------

    @invariant()
    def deliveries_agree(self) -> None:
        for index, sub in enumerate(self.model.subscriptions):
            while True:
                message = self.call(self.subs[index].get(timeout=0))
                if message is None:
                    break
                if not sub.open:
                    raise ContractViolation("message_bus.unsubscribe", f"closed subscription {index} to {sub.pattern!r} "
                                            f"delivered {dict(message.data)} on {message.channel!r}")
                self._receive(index, message)

    def _receive(self, index: int, message: BusMessage) -> None:
        sub = self.model.subscriptions[index]
        data = dict(message.data)
        publisher, seq, via = data.get("pub"), data.get("seq"), data.get("via")
        where = f"subscription {index} to {sub.pattern!r} got {publisher}#{seq} on {message.channel!r}"
        expect(isinstance(publisher, str) and message.channel == via, "message_bus.fanout",
               f"{where}: the message was published on {via!r} with data {data}")
        if not channel_matches(sub.pattern, message.channel):
            raise ContractViolation("message_bus.patterns", f"{where}, which the pattern does not match")
        owed = sub.owed.get(str(publisher), [])
        if owed and owed[0] == seq:
            owed.pop(0)
            return
        if seq in owed:
            raise ContractViolation("message_bus.order", f"{where} while {publisher}#{owed[0]} (published earlier) is still owed")
        raise ContractViolation("message_bus.fanout", f"{where}, which it is not owed (a duplicate, or published "
                                f"before it subscribed); still owed from {publisher}: {owed}")


class PatternMessageBusMachine(MessageBusMachine):
    """The same, with pattern subscriptions among the plain ones."""

    patterns = PATTERNS


@conformance_check("message_bus", ("message_bus.fanout", "message_bus.order", "message_bus.unsubscribe"), timeout=300.0)
def check_message_bus_state_machine(context: CheckContext) -> None:
    """Random subscribes, publishes from three publishers and unsubscribes agree with the model after every step."""
    run_machine(MessageBusMachine, context, examples=0.5)


@conformance_check("message_bus", (
    "message_bus.fanout", "message_bus.order", "message_bus.patterns", "message_bus.unsubscribe",
), requires=("pattern_subscriptions",), timeout=300.0)
def check_message_bus_pattern_state_machine(context: CheckContext) -> None:
    """The same with '*' and '>' pattern subscriptions: each gets exactly the matching channels' messages."""
    run_machine(PatternMessageBusMachine, context, examples=0.5)
