"""`python -m pipeline acls`: the Kafka ACLs of a deployment, printed or (--apply) created.

Internal records (changelogs, the creator repartition, the redrive log) look like any
other on the wire: only the broker can tell who wrote them. With an authorizer on the
brokers, these ACLs let

- the pipeline's principal read the input topics and own (read, write, create) its own
  topics (every `{prefix}ledger-` topic: internal ones and `ledger-outcomes`), the other
  outputs, its consumer group `{prefix}ledger` and its transactional ids
  (`{prefix}ledger-tx-<partition>`, a prefixed pattern);
- each producing service write its own input topic, nothing else;
- readers read the output topics, nothing else (and use consumer groups of a prefix).

Everything not allowed is denied (`allow.everyone.if.no.acl.found=false`). The ACLs are
derived from pipeline/topics.py, so a topic added there is covered.

Client: aiokafka 0.14's admin client has no ACL calls, but aiokafka carries the wire
structs of DescribeAcls and CreateAcls (v1: pattern types, Kafka >= 2.0); this module
sends them over aiokafka's own client, with the settings' connection options (SASL, TLS)
like every other Kafka client of the pipeline. One Kafka library, asynchronous, and two
requests: no second client library (kafka-python's admin) for that.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.admin import CreateAclsRequest_v1, DescribeAclsRequest_v1
from aiokafka.protocol.api import Request

from pipeline import topics
from pipeline.settings import ConfigError, Settings

# Kafka's codes (org.apache.kafka.common.resource / acl).
RESOURCE_TYPES = {"topic": 2, "group": 3, "cluster": 4, "transactional-id": 5}
PATTERNS = {"literal": 3, "prefixed": 4}
OPERATIONS = {"all": 2, "read": 3, "write": 4, "create": 5, "delete": 6, "alter": 7, "describe": 8,
              "cluster-action": 9, "describe-configs": 10, "alter-configs": 11, "idempotent-write": 12}
_ANY, _ALLOW = 1, 3
_CODE_NAMES = {kind: {v: k for k, v in codes.items()} for kind, codes in
               (("resource", RESOURCE_TYPES), ("pattern", PATTERNS), ("operation", OPERATIONS))}
HOST = "*"
# Kafka principals are TYPE:NAME; SASL and TLS give `User:...` (a TLS name may hold '=').
_PRINCIPAL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*:\S.*$")
_GROUP_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_CLUSTER_AUTHORIZATION_FAILED, _SECURITY_DISABLED = 31, 54


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW entry for any host; `why` only explains it in the table."""

    principal: str
    resource: str  # a key of RESOURCE_TYPES
    pattern: str  # "literal" or "prefixed"
    name: str
    operation: str  # a key of OPERATIONS
    why: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.principal, self.resource, self.pattern, self.name, self.operation)


@dataclass(frozen=True)
class Plan:
    pipeline: str
    producers: dict[str, list[str]]  # input topic (unprefixed) -> principals
    readers: list[tuple[str, str | None]]  # principal, consumer-group prefix or None
    redrive: bool = False


def _principal(value: str, option: str) -> str:
    value = value.strip()
    if not _PRINCIPAL_RE.match(value):
        raise ConfigError(f"{option} {value!r} is not a Kafka principal; write it as User:NAME (e.g. User:ledger)")
    return value


def parse_plan(pipeline: str | None, producers: Iterable[str], readers: Iterable[str], redrive: bool = False) -> Plan:
    """The command line's principals, validated; a bad one raises ConfigError naming the option."""
    if not pipeline:
        raise ConfigError("--pipeline-principal is missing; give the principal the workers authenticate as, "
                          "e.g. --pipeline-principal User:ledger")
    by_topic: dict[str, list[str]] = {}
    for raw in producers:
        topic, sep, principal = raw.partition("=")
        if not sep or topic not in topics.INPUTS:
            raise ConfigError(f"--producer {raw!r}: write TOPIC=PRINCIPAL with TOPIC one of "
                              f"{', '.join(topics.INPUTS)} (without PIPELINE_TOPIC_PREFIX), e.g. "
                              "--producer recharges=User:payments")
        by_topic.setdefault(topic, []).append(_principal(principal, f"--producer {topic}="))
    parsed_readers: list[tuple[str, str | None]] = []
    for raw in readers:
        group, sep, principal = raw.partition("=")
        if sep and _GROUP_RE.match(group):  # GROUP_PREFIX=PRINCIPAL (a principal has ':' first)
            parsed_readers.append((_principal(principal, f"--reader {group}="), group))
        else:
            parsed_readers.append((_principal(raw, "--reader"), None))
    return Plan(_principal(pipeline, "--pipeline-principal"), by_topic, parsed_readers, redrive)


def desired(settings: Settings, plan: Plan) -> list[Acl]:
    """Every ACL of the deployment, in table order."""
    t, p = settings.topic, plan.pipeline
    own = t("ledger-")  # every topic the pipeline names `ledger-...`: internal ones and ledger-outcomes
    out: list[Acl] = []
    for name in topics.INPUTS:
        out.append(Acl(p, "topic", "literal", t(name), "read", "input"))
        out.append(Acl(p, "topic", "literal", t(name), "create", "created at start if missing"))
    for op in ("read", "write", "create"):
        out.append(Acl(p, "topic", "prefixed", own, op, "internal topics, ledger-outcomes"))
    for name in topics.OUTPUTS + topics.INTERNAL:
        if not t(name).startswith(own):
            for op in ("read", "write", "create"):
                out.append(Acl(p, "topic", "literal", t(name), op, "output"))
    out.append(Acl(p, "group", "literal", settings.group_id, "read", "consumer group"))
    out.append(Acl(p, "transactional-id", "prefixed", t("ledger-tx-"), "write", "transactional ids, one per partition"))
    if plan.redrive:
        out.append(Acl(p, "transactional-id", "literal", t("ledger-redrive"), "write", "`redrive`"))
        for name in topics.PARTITIONED_INPUTS:  # promotions are not redriven (pipeline/redrive.py)
            out.append(Acl(p, "topic", "literal", t(name), "write", "`redrive`"))
    for topic in topics.INPUTS:
        for principal in plan.producers.get(topic, ()):
            out.append(Acl(principal, "topic", "literal", t(topic), "write", "producing service"))
    for principal, group in plan.readers:
        for name in topics.OUTPUTS:
            out.append(Acl(principal, "topic", "literal", t(name), "read", "reader"))
        if group:
            out.append(Acl(principal, "group", "prefixed", group, "read", "reader's consumer groups"))
    seen: set[tuple[str, ...]] = set()
    return [a for a in out if not (a.key in seen or seen.add(a.key))]  # type: ignore[func-returns-value]


# --- wire -----------------------------------------------------------------------------

class _DescribeAll(Request[DescribeAclsRequest_v1]):  # type: ignore[misc]  # aiokafka has no type information
    API_KEY = 29

    def build(self, request_struct_class: type[DescribeAclsRequest_v1]) -> DescribeAclsRequest_v1:
        # Every ACL: any resource type, name, pattern, principal, host, operation, permission.
        return request_struct_class(_ANY, None, _ANY, None, None, _ANY, _ANY)


class _Create(Request[CreateAclsRequest_v1]):  # type: ignore[misc]  # aiokafka has no type information
    API_KEY = 30

    def __init__(self, acls: list[Acl]) -> None:
        self.acls = acls

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class([
            (RESOURCE_TYPES[a.resource], a.name, PATTERNS[a.pattern], a.principal, HOST, OPERATIONS[a.operation],
             _ALLOW)
            for a in self.acls
        ])


def _check(error_code: int, message: str | None, settings: Settings) -> None:
    if error_code == 0:
        return
    if error_code == _SECURITY_DISABLED:
        raise ConfigError("the brokers have no authorizer, so ACLs cannot be set; configure authorizer.class.name="
                          "org.apache.kafka.metadata.authorizer.StandardAuthorizer on them first (docs: Security)")
    if error_code == _CLUSTER_AUTHORIZATION_FAILED:
        who = f"PIPELINE_KAFKA_USERNAME={settings.kafka_username}" if settings.kafka_username else "this client"
        raise ConfigError(f"{who} may not manage ACLs; run `acls --apply` with an admin's credentials "
                          "(a super user, or ALTER and DESCRIBE on the cluster)")
    raise KafkaError(f"{for_code(error_code).__name__}: {message or ''}".rstrip(": "))


def _existing(response: Any, settings: Settings) -> set[tuple[str, ...]]:
    _check(response.error_code, response.error_message, settings)
    keys: set[tuple[str, ...]] = set()
    for resource_type, name, pattern, entries in response.resources:
        for principal, host, operation, permission in entries:
            resource = _CODE_NAMES["resource"].get(resource_type)
            if permission == _ALLOW and host == HOST and resource:
                keys.add((principal, resource, _CODE_NAMES["pattern"].get(pattern, "?"), name,
                          _CODE_NAMES["operation"].get(operation, "?")))
    return keys


async def apply(settings: Settings, acls: list[Acl], timeout_s: float = 30.0) -> dict[tuple[str, ...], str]:
    """Create the ACLs missing on the cluster; returns each one's state, "created" or
    "present". Safe to repeat: what exists is left as it is, nothing is deleted."""
    client = AIOKafkaClient(**settings.kafka_options(), request_timeout_ms=int(timeout_s * 1000))
    # aiokafka logs each failed bootstrap connection itself: the ConfigError's one line says it.
    kafka_log = logging.getLogger("aiokafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        try:
            await asyncio.wait_for(client.bootstrap(), timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            if settings.kafka_security_protocol.endswith("SSL") and (tls := await topics.tls_failure(settings)):
                raise ConfigError(tls) from None
            raise ConfigError(
                f"cannot reach Kafka at PIPELINE_BOOTSTRAP_SERVERS={settings.bootstrap_servers} "
                f"({exc.__class__.__name__}); check it and PIPELINE_KAFKA_SECURITY_PROTOCOL, "
                "PIPELINE_KAFKA_USERNAME and PIPELINE_KAFKA_PASSWORD (an admin's)"
            ) from None
        finally:
            kafka_log.setLevel(level)
        node = client.get_random_node()
        present = _existing(await client.send(node, _DescribeAll()), settings)
        missing = [a for a in acls if a.key not in present]
        if missing:
            response = await client.send(node, _Create(missing))
            for code, message in response.creation_responses:
                _check(code, message, settings)
        return {a.key: ("present" if a.key in present else "created") for a in acls}
    finally:
        await client.close()


# --- command line ---------------------------------------------------------------------

def table(acls: list[Acl], states: dict[tuple[str, ...], str] | None = None) -> str:
    """One row per principal and resource pattern, its operations together."""
    rows: dict[tuple[str, ...], list[Acl]] = {}
    for a in acls:
        rows.setdefault((a.principal, a.resource, a.pattern, a.name), []).append(a)
    head = ["principal", "resource", "pattern", "name", "operations", "for"] + (["state"] if states is not None else [])
    lines = []
    for (principal, resource, pattern, name), group in rows.items():
        line = [principal, resource, pattern, name, ",".join(a.operation for a in group),
                "; ".join(dict.fromkeys(a.why for a in group))]
        if states is not None:
            created = [a.operation for a in group if states[a.key] == "created"]
            line.append("present" if not created else "created" if len(created) == len(group)
                        else "created " + ",".join(created))
        lines.append(line)
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def _covered(settings: Settings) -> str:
    own = settings.topic("ledger-")
    names = [settings.topic(n) for n in topics.INTERNAL + topics.OUTPUTS if settings.topic(n).startswith(own)]
    return f"{own} (prefixed) covers {', '.join(names)}, and any topic the pipeline adds under that name"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline-principal", metavar="PRINCIPAL",
                   help="the principal the workers authenticate as, e.g. User:ledger (required)")
    p.add_argument("--producer", action="append", default=[], metavar="TOPIC=PRINCIPAL",
                   help="a service that writes one input topic, e.g. recharges=User:payments (repeatable)")
    p.add_argument("--reader", action="append", default=[], metavar="[GROUP_PREFIX=]PRINCIPAL",
                   help="a principal that reads the output topics, e.g. User:dashboards; with GROUP_PREFIX= "
                   "it may also use consumer groups whose id starts with it (repeatable)")
    p.add_argument("--redrive", action="store_true",
                   help="also let the pipeline's principal run `redrive` (it writes the input topics)")
    p.add_argument("--apply", action="store_true",
                   help="create the missing ACLs (with an admin's PIPELINE_KAFKA_* credentials); safe to repeat")


def main(args: argparse.Namespace) -> int:
    from pipeline import settings as settings_module

    s = settings_module.load()
    acls = desired(s, parse_plan(args.pipeline_principal, args.producer, args.reader, args.redrive))
    if not args.apply:
        print(table(acls))
        print(f"\n{_covered(s)}.\n{len(acls)} ACLs (allow, any host); "
              "nothing changed: --apply creates the missing ones")
        return 0
    states = asyncio.run(apply(s, acls))
    print(table(acls, states))
    created = sum(1 for v in states.values() if v == "created")
    print(f"\n{_covered(s)}.\n{len(acls)} ACLs: {created} created, {len(acls) - created} already present")
    return 0
