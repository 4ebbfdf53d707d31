"""The ACL plan of `python -m pipeline acls` (no broker): who may do what, under the topic
prefix, and bad options refused in one line naming the option."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline import topics
from pipeline.acls import desired, parse_plan, table
from pipeline.settings import PROJECT_ROOT, ConfigError, load


def _plan(prefix: str = "p1-", redrive: bool = False):
    s = load({"PIPELINE_TOPIC_PREFIX": prefix})
    plan = parse_plan("User:ledger", ["recharges=User:payments", "gifts=User:gifting"],
                      ["User:dashboards", "dash-=User:CN=dash,O=acme"], redrive)
    return s, desired(s, plan)


def _grants(acls, principal):
    return {(a.resource, a.pattern, a.name, a.operation) for a in acls if a.principal == principal}


def test_each_principal_gets_only_its_part_under_the_prefix() -> None:
    s, acls = _plan()
    assert all(a.name.startswith("p1-") or a.name == "dash-" for a in acls)
    assert _grants(acls, "User:payments") == {("topic", "literal", "p1-recharges", "write")}
    assert _grants(acls, "User:gifting") == {("topic", "literal", "p1-gifts", "write")}
    assert _grants(acls, "User:dashboards") == {("topic", "literal", s.topic(t), "read") for t in topics.OUTPUTS}
    assert ("group", "prefixed", "dash-", "read") in _grants(acls, "User:CN=dash,O=acme")
    ledger = _grants(acls, "User:ledger")
    assert {("group", "literal", "p1-ledger", "read"),
            ("transactional-id", "prefixed", "p1-ledger-tx-", "write")} <= ledger
    # Its own topics: every internal one and the outputs, read, written, created.
    for name in topics.INTERNAL + topics.OUTPUTS:
        for op in ("read", "write", "create"):
            assert any(r == "topic" and op == o
                       and (n == s.topic(name) or (pat == "prefixed" and s.topic(name).startswith(n)))
                       for r, pat, n, o in ledger), (name, op)
    # Its inputs: read (and created when missing), never written without --redrive.
    writes = {n for r, _, n, o in ledger if r == "topic" and o == "write"}
    assert not writes & {s.topic(t) for t in topics.INPUTS}
    assert not any(pat == "prefixed" and s.topic(t).startswith(n) for t in topics.INPUTS
                   for r, pat, n, o in ledger if r == "topic")
    _, with_redrive = _plan(redrive=True)
    assert ("transactional-id", "literal", "p1-ledger-redrive", "write") in _grants(with_redrive, "User:ledger")
    assert ("topic", "literal", "p1-recharges", "write") in _grants(with_redrive, "User:ledger")


def test_the_table_has_one_row_per_resource() -> None:
    _, acls = _plan()
    text = table(acls)
    assert text.splitlines()[0].split() == ["principal", "resource", "pattern", "name", "operations", "for"]
    assert "p1-ledger-  " in text and "read,write,create" in text
    assert len(text.splitlines()) == 2 + len({(a.principal, a.resource, a.pattern, a.name) for a in acls})


@pytest.mark.parametrize(("args", "names"), [
    ([], "--pipeline-principal"),
    (["--pipeline-principal", "ledger"], "--pipeline-principal"),
    (["--pipeline-principal", "User:ledger", "--producer", "ledger-creator-ops=User:x"], "--producer"),
    (["--pipeline-principal", "User:ledger", "--producer", "recharges=payments"], "--producer recharges="),
    (["--pipeline-principal", "User:ledger", "--reader", "dashboards"], "--reader"),
])
def test_bad_options_are_refused_in_one_line(args: list[str], names: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline", "acls", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {names}") and "Traceback" not in proc.stderr, proc.stderr


def test_a_principal_must_be_type_and_name() -> None:
    with pytest.raises(ConfigError, match="User:NAME"):
        parse_plan("User:ledger", [], ["User"])
