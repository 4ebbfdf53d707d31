"""tools/quiesce.py: when a group has applied everything, marker offsets included."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from tools.quiesce import short_of

GIFTS, OPS = TopicPartition("gifts", 0), TopicPartition("ops", 1)


def test_an_input_must_be_committed_to_its_end() -> None:
    assert short_of({GIFTS: 10}, {GIFTS: 9}, frozenset()) == {GIFTS: 1}
    assert short_of({GIFTS: 10}, {GIFTS: 10}, frozenset()) == {}
    assert short_of({GIFTS: 0}, {}, frozenset()) == {}  # an empty partition, never committed


def test_a_transactional_topic_may_stand_one_short_for_its_commit_marker() -> None:
    assert short_of({OPS: 10}, {OPS: 9}, frozenset({"ops"})) == {}
    assert short_of({OPS: 10}, {OPS: 8}, frozenset({"ops"})) == {OPS: 1}
    assert short_of({OPS: 10, GIFTS: 5}, {}, frozenset({"ops"})) == {OPS: 9, GIFTS: 5}
