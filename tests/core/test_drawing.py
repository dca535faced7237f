"""Graph.draw_mermaid and Graph.draw_ascii show every route the engine can take."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_agents import END, START, Graph
from distributed_agents.core.errors import GraphNotCompiledError


def noop(state: Any) -> dict[str, Any]:
    return {}


def route_review(state: Any) -> str:
    return str(state["decision"])


def entry(state: Any) -> str:
    return "a"


def review_graph() -> Graph:
    graph = Graph("review")
    for name in ("writer", "reviewer", "publisher"):
        graph.add_node(name, noop)
    graph.set_entry_point("writer").add_edge("writer", "reviewer")
    graph.add_conditional_edge("reviewer", route_review, {"revise": "writer", "approve": "publisher"})
    return graph.set_finish_point("publisher").compile()


def fan_out_graph() -> Graph:
    graph = Graph("fan_out")
    for name in ("plan", "search", "read", "summarise"):
        graph.add_node(name, noop)
    graph.set_entry_point("plan").add_edge("plan", "search").add_edge("plan", "read")
    return graph.add_edge(["search", "read"], "summarise").set_finish_point("summarise").compile()


def test_mermaid_draws_edges_solid_conditions_dashed_with_their_keys_and_start_end() -> None:
    assert review_graph().draw_mermaid() == """\
---
title: "review"
---
flowchart TD
    __start__(["START"]):::terminal
    n0["writer"]
    n1["reviewer"]
    n2["publisher"]
    __end__(["END"]):::terminal
    __start__ --> n0
    n0 --> n1
    n2 --> __end__
    n1 -.->|"revise"| n0
    n1 -.->|"approve"| n2
    classDef terminal fill:#f2f2f2,stroke:#555
    classDef join fill:#333,stroke:#333
"""


def test_mermaid_draws_a_join_as_one_point_all_sources_lead_into() -> None:
    text = fan_out_graph().draw_mermaid()
    assert '    join0((" ")):::join\n    n1 --- join0\n    n2 --- join0\n    join0 --> n3\n' in text
    assert text.count("join0((") == 1 and "n1 --> n3" not in text


def test_ascii_lists_each_node_in_flow_order_with_its_ways_out() -> None:
    assert review_graph().draw_ascii() == """\
graph 'review'
==============
(START)
  `--> [writer]
[writer]
  `--> [reviewer]
[reviewer]
  |-.-> [writer]     (route_review: revise)
  `-.-> [publisher]  (route_review: approve)
[publisher]
  `--> (END)

--> edge   -.-> conditional edge (condition: key) or Command goto   ==> join (runs once all its sources ran)
"""
    fan_out = fan_out_graph().draw_ascii()
    assert "[search]\n  `==> [summarise]  (join: after search + read)\n" in fan_out
    assert fan_out.index("[plan]\n") < fan_out.index("[search]\n") < fan_out.index("[summarise]\n")


def test_conditions_from_start_and_without_targets_are_drawn_to_every_possible_target() -> None:
    graph = Graph("open")
    graph.add_node("a", noop).add_node("b", noop)
    graph.add_conditional_edge(START, entry, ["a", END])
    graph.add_conditional_edge("a", route_review)  # may return any node name or END
    graph.set_finish_point("b").compile()
    text = graph.draw_mermaid()
    assert '__start__ -.->|"entry"| n0' in text and '__start__ -.->|"entry"| __end__' in text
    for target in ("n0", "n1", "__end__"):
        assert f'n0 -.->|"route_review"| {target}' in text
    assert "[a]\n  |-.-> [a]    (route_review)\n  |-.-> [b]    (route_review)\n  `-.-> (END)  (route_review)\n" in graph.draw_ascii()


def test_command_destinations_deferred_nodes_and_breakpoints_are_drawn() -> None:
    graph = Graph("commands")
    graph.add_node("a", noop, destinations=["b", "c"]).add_node("b", noop).add_node("c", noop, defer=True)
    graph.set_entry_point("a").set_finish_point("b").set_finish_point("c")
    graph.compile(interrupt_before=["b"], interrupt_after=["b"])
    text = graph.draw_mermaid()
    assert '    n0 -.->|"goto"| n1\n    n0 -.->|"goto"| n2\n' in text
    assert '    n1["b (interrupt before, interrupt after)"]' in text and '    n2["c (deferred)"]' in text
    ascii_text = graph.draw_ascii()
    assert "[a]\n  |-.-> [b]  (Command goto)\n  `-.-> [c]  (Command goto)\n" in ascii_text
    assert "[b]  (interrupt before, interrupt after)\n" in ascii_text and "[c]  (deferred)\n" in ascii_text


def test_names_the_mermaid_parser_would_misread_are_escaped() -> None:
    name = 'say "hi" <b>#1</b>\nend'
    graph = Graph('quote "graph": x').add_node(name, noop).set_entry_point(name).set_finish_point(name).compile()
    text = graph.draw_mermaid()
    assert 'title: "quote \\"graph\\": x"' in text
    assert 'n0["say #quot;hi#quot; #lt;b#gt;#35;1#lt;/b#gt;#10;end"]' in text


def test_drawing_needs_a_compiled_graph() -> None:
    graph = Graph("draft").add_node("a", noop).set_entry_point("a")
    with pytest.raises(GraphNotCompiledError, match="'draft' is not compiled"):
        graph.draw_mermaid()
    with pytest.raises(GraphNotCompiledError):
        graph.draw_ascii()


MERMAID_LINE = re.compile(
    r'^    (?:__start__\(\["START"\]\):::terminal|__end__\(\["END"\]\):::terminal|n\d+\["[^"]*"\]'
    r'|join\d+\(\(" "\)\):::join|(?:__start__|n\d+|join\d+) (?:-->|---|-\.->\|"[^"]*"\|) (?:n\d+|__end__|join\d+)'
    r'|classDef \w+ [^\n]+)$'
)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_route_of_any_graph_is_drawn_once_in_well_formed_mermaid(data: st.DataObject) -> None:
    """Random graphs (chains, fan-outs, joins, conditions): every line is of the drawn grammar,
    every node is defined once, and every edge or condition target appears."""
    size = data.draw(st.integers(1, 6))
    names = [data.draw(st.text(min_size=1, max_size=6).filter(lambda n: not n.startswith("__")), label=f"n{i}")
             for i in range(size)]
    names = list(dict.fromkeys(names))
    graph = Graph("random").add_node(names[0], noop).set_entry_point(names[0])
    expected = 0
    for index, name in enumerate(names[1:], start=1):
        graph.add_node(name, noop)
        sources = data.draw(st.lists(st.sampled_from(names[:index]), min_size=1, max_size=3, unique=True))
        if len(sources) > 1 or data.draw(st.booleans()):
            graph.add_edge(sources if len(sources) > 1 else sources[0], name)
            expected += len(sources) + (1 if len(sources) > 1 else 0)
        else:
            graph.add_conditional_edge(sources[0], lambda s: "go", {"go": name, f"stop{index}": END})
            expected += 2
    for name in names:
        graph.set_finish_point(name)
    expected += len(names) + 1  # the finish edges and START -> entry
    graph.compile()
    lines = graph.draw_mermaid().splitlines()
    assert lines[:4] == ["---", 'title: "random"', "---", "flowchart TD"]
    body = lines[4:]
    assert all(MERMAID_LINE.match(line) for line in body), [line for line in body if not MERMAID_LINE.match(line)]
    assert sum(1 for line in body if re.match(r'^    n\d+\["', line)) == len(names)
    arrows = [line for line in body if re.search(r" (?:-->|---|-\.->)", line)]
    assert len(arrows) == expected
