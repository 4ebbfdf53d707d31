"""economics.toml and the PIPELINE_* variables: defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline import economics, settings
from pipeline.economics import Economics
from pipeline.settings import ConfigError

CONTRACT_GIFTS = {
    "rose": 1, "finger_heart": 5, "perfume": 20, "confetti": 100,
    "money_gun": 500, "galaxy": 1000, "lion": 29999, "universe": 44999,
}


def valid() -> dict[str, Any]:
    """A complete, valid economics table (the contract's defaults), to spoil one key of."""
    return {
        "gifts": dict(CONTRACT_GIFTS),
        "recharge_packages": [100, 500],
        "creator_share_percent": 50,
        "payout_millicents_per_diamond": 500,
        "min_payout_diamonds": 2000,
        "platform_daily_coin_limit": 200_000,
        "dedupe_window_days": 7,
    }


# --- economics ------------------------------------------------------------------------


def test_shipped_file_has_the_contract_defaults() -> None:
    econ = economics.load()
    assert dict(econ.gifts) == CONTRACT_GIFTS
    assert (
        econ.creator_share_percent, econ.payout_millicents_per_diamond, econ.min_payout_diamonds,
        econ.platform_daily_coin_limit, econ.dedupe_window_days,
    ) == (50, 500, 2000, 200_000, 7)
    assert econ == economics.parse({**valid(), "recharge_packages": list(econ.recharge_packages)})


def test_derived_amounts() -> None:
    econ = economics.load()
    assert [econ.creator_diamonds(c) for c in (0, 1, 2, 3, 29_999, 10**6)] == [0, 0, 1, 1, 14_999, 500_000]
    assert [econ.payout_cents(d) for d in (1, 2, 2_001, 10**12)] == [0, 1, 1_000, 5 * 10**11]


def test_gift_catalog_is_read_only() -> None:
    with pytest.raises(TypeError):
        economics.load().gifts["rose"] = 0  # type: ignore[index]


def spoil(**changes: Any) -> dict[str, Any]:
    data = valid()
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(("data", "named"), [
    (spoil(gifts={**CONTRACT_GIFTS, "rose": 0}), "gifts.rose"),
    (spoil(gifts={**CONTRACT_GIFTS, "lion": 1.5}), "gifts.lion"),
    (spoil(gifts={**CONTRACT_GIFTS, "galaxy": True}), "gifts.galaxy"),
    (spoil(gifts={**CONTRACT_GIFTS, "bad id": 1}), "bad id"),
    (spoil(gifts={}), "gifts"),
    (spoil(gifts=KeyError), "gifts"),
    (spoil(creator_share_percent="50"), "creator_share_percent"),
    (spoil(creator_share_percent=101), "creator_share_percent"),
    (spoil(creator_share_percent=50.0), "creator_share_percent"),
    (spoil(min_payout_diamonds=0), "min_payout_diamonds"),
    (spoil(min_payout_diamonds=KeyError), "min_payout_diamonds"),
    (spoil(platform_daily_coin_limit=-1), "platform_daily_coin_limit"),
    (spoil(payout_millicents_per_diamond=KeyError), "payout_millicents_per_diamond"),
    (spoil(dedupe_window_days=6), "dedupe_window_days"),
    (spoil(recharge_packages=[]), "recharge_packages"),
    (spoil(recharge_packages=[100, 0]), "recharge_packages"),
    (spoil(creator_share=50), "creator_share"),
])
def test_bad_value_names_the_key(data: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        economics.parse(data, "econ.toml")


def test_load_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="PIPELINE_ECONOMICS_FILE"):
        economics.load(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("gifts = [\n")
    with pytest.raises(ConfigError, match="broken.toml"):
        economics.load(broken)


def test_load_of_a_custom_file(tmp_path: Path) -> None:
    path = tmp_path / "e.toml"
    path.write_text(
        "recharge_packages = [1]\ncreator_share_percent = 70\npayout_millicents_per_diamond = 1000\n"
        "min_payout_diamonds = 10\nplatform_daily_coin_limit = 0\ndedupe_window_days = 30\n[gifts]\nstar = 3\n"
    )
    assert economics.load(path) == Economics({"star": 3}, (1,), 70, 1000, 10, 0, 30)
    price_zero = path.read_text().replace("star = 3", "star = 0")
    path.write_text(price_zero)
    with pytest.raises(ConfigError, match=r"gifts\.star"):
        economics.load(path)


# --- settings ---------------------------------------------------------------------------


def test_defaults() -> None:
    s = settings.load({})
    assert (s.bootstrap_servers, s.redis_url, s.web_port, s.partitions, s.topic_prefix) == (
        "127.0.0.1:9092", "redis://127.0.0.1:6379/0", 6066, 4, "")


def test_valid_values_are_read() -> None:
    s = settings.load({
        "PIPELINE_WEB_PORT": "8080", "PIPELINE_PARTITIONS": "256", "PIPELINE_REDIS_URL": "rediss://:pw@cache:6380/2",
        "PIPELINE_BOOTSTRAP_SERVERS": "k1:9092, k2:9093", "PIPELINE_TOPIC_PREFIX": "t1.",
    })
    assert (s.web_port, s.partitions, s.redis_url, s.bootstrap_list) == (
        8080, 256, "rediss://:pw@cache:6380/2", ["k1:9092", "k2:9093"])
    assert (s.topic("gifts"), s.group_id) == ("t1.gifts", "t1.ledger")
    assert settings.redis_address(s) == ("cache", 6380)
    assert settings.kafka_address(s) == ("k1", 9092)


@pytest.mark.parametrize(("name", "value"), [
    ("PIPELINE_WEB_PORT", "http"), ("PIPELINE_WEB_PORT", "0"), ("PIPELINE_WEB_PORT", "65536"),
    ("PIPELINE_WEB_PORT", "80.5"),
    ("PIPELINE_PARTITIONS", "0"), ("PIPELINE_PARTITIONS", "257"), ("PIPELINE_PARTITIONS", "four"),
    ("PIPELINE_PARTITIONS", "-1"),
    ("PIPELINE_REDIS_URL", "http://127.0.0.1:6379"), ("PIPELINE_REDIS_URL", "127.0.0.1:6379"),
    ("PIPELINE_REDIS_URL", "redis://"), ("PIPELINE_REDIS_URL", ""),
    ("PIPELINE_BOOTSTRAP_SERVERS", ""), ("PIPELINE_BOOTSTRAP_SERVERS", "  "),
    ("PIPELINE_BOOTSTRAP_SERVERS", "kafka"), ("PIPELINE_BOOTSTRAP_SERVERS", "kafka:"),
    ("PIPELINE_BOOTSTRAP_SERVERS", ":9092"), ("PIPELINE_BOOTSTRAP_SERVERS", "kafka:0"),
    ("PIPELINE_BOOTSTRAP_SERVERS", "kafka:65536"), ("PIPELINE_BOOTSTRAP_SERVERS", "k1:9092,kafka:x"),
    ("PIPELINE_TOPIC_PREFIX", "a b"), ("PIPELINE_LOG_LEVEL", "loud"),
])
def test_bad_setting_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        settings.load({name: value})


@pytest.mark.parametrize("url", ["redis://127.0.0.1:notaport/0", "redis://127.0.0.1:99999/0"])
def test_redis_url_with_bad_port_names_the_variable(url: str) -> None:
    with pytest.raises(ConfigError, match="PIPELINE_REDIS_URL"):
        settings.load({"PIPELINE_REDIS_URL": url})


def test_economics_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PIPELINE_ECONOMICS_FILE"):
        settings.load({"PIPELINE_ECONOMICS_FILE": str(tmp_path / "missing.toml")})


def test_two_http_tokens_while_rotating_but_not_three_nor_an_empty_one() -> None:
    new, old = "new-" + "n" * 20, "old-" + "o" * 20
    assert settings.load({"PIPELINE_HTTP_TOKEN": f"{new}, {old}"}).http_tokens == (new, old)
    assert settings.load({"PIPELINE_HTTP_TOKEN": ""}).http_tokens == ()
    for bad in (f"{new},{old},{'x' * 20}", f"{new},", f"{new},short"):
        with pytest.raises(ConfigError, match="PIPELINE_HTTP_TOKEN"):
            settings.load({"PIPELINE_HTTP_TOKEN": bad})


def test_secrets_stay_out_of_the_settings_repr() -> None:
    s = settings.load({"PIPELINE_REDIS_URL": "redis://:hunter2-secret@127.0.0.1:6379/0",
                       "PIPELINE_HTTP_TOKEN": "tok-" + "s" * 30})
    assert s.http_tokens == ("tok-" + "s" * 30,) and "hunter2-secret" in s.redis_url
    assert "hunter2" not in repr(s) and "sss" not in repr(s)


def test_sasl_needs_both_credentials_and_keeps_the_password_out_of_the_repr() -> None:
    with pytest.raises(ConfigError, match="PIPELINE_KAFKA_USERNAME and PIPELINE_KAFKA_PASSWORD"):
        settings.load({"PIPELINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PIPELINE_KAFKA_USERNAME": "u"})
    s = settings.load({"PIPELINE_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext", "PIPELINE_KAFKA_USERNAME": "u",
                       "PIPELINE_KAFKA_PASSWORD": "pw-secret-1"})
    options = s.kafka_options()
    assert (options["security_protocol"], options["sasl_mechanism"], options["sasl_plain_password"]) == (
        "SASL_PLAINTEXT", "SCRAM-SHA-512", "pw-secret-1")
    assert "pw-secret-1" not in repr(s)


@pytest.mark.parametrize("url", ["redis://:s3cret-pw@host:notaport/0", "rediss://ledger:s3cret-pw@host:99999/0",
                                 "redis://s3cret-pw@:6379/0", "redis://:s3cret@pw@host:x/0",
                                 "ftp://:s3cret-pw@host/0", "redis://host:x/0?password=s3cret-pw"])
def test_a_bad_redis_url_is_named_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError, match="PIPELINE_REDIS_URL") as err:
        settings.load({"PIPELINE_REDIS_URL": url})
    assert "s3cret" not in str(err.value) and "***" in str(err.value)


@pytest.mark.parametrize("url,shown", [
    ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://user:pw@h:6380/1", "rediss://user:***@h:6380/1"),
    ("redis://pw@h/0", "redis://***@h/0"),
    ("redis://:p@ss:w/rd@h/0", "redis://:***@h/0"),  # malformed: up to the last '@' is user info
    ("redis://h:6379/0?db=1&password=pw", "redis://h:6379/0?db=1&password=***"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("unix:///run/redis.sock", "unix:///run/redis.sock"),
])
def test_redacted_url_hides_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert settings.redacted_url(url) == shown


def test_redis_ca_file_must_exist_hold_pem_and_come_with_rediss(tmp_path: Path) -> None:
    import trustme

    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    s = settings.load({"PIPELINE_REDIS_URL": "rediss://127.0.0.1:6380/0", "PIPELINE_REDIS_CA_FILE": str(ca)})
    assert s.redis_ca_file == ca
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    for env in ({"PIPELINE_REDIS_URL": "rediss://127.0.0.1:6380/0", "PIPELINE_REDIS_CA_FILE": str(tmp_path / "no.pem")},
                {"PIPELINE_REDIS_URL": "rediss://127.0.0.1:6380/0", "PIPELINE_REDIS_CA_FILE": str(not_pem)},
                {"PIPELINE_REDIS_URL": "redis://127.0.0.1:6379/0", "PIPELINE_REDIS_CA_FILE": str(ca)}):
        with pytest.raises(ConfigError, match="PIPELINE_REDIS_CA_FILE"):
            settings.load(env)
    with pytest.raises(ConfigError, match="PIPELINE_KAFKA_CA_FILE"):
        settings.load({"PIPELINE_KAFKA_SECURITY_PROTOCOL": "SSL", "PIPELINE_KAFKA_CA_FILE": str(not_pem)})


def test_every_redis_client_gets_the_ca_file_with_rediss(tmp_path: Path) -> None:
    from pipeline import redis_client

    ca = tmp_path / "ca.pem"
    ca.write_text("")
    tls = settings.Settings(redis_url="rediss://:pw@127.0.0.1:6380/0", redis_ca_file=ca)
    assert redis_client.options(tls)["ssl_ca_certs"] == str(ca)
    kwargs = redis_client.connect(tls).connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == str(ca) and kwargs["ssl_check_hostname"] is True
    assert redis_client.connect_sync(tls).connection_pool.connection_kwargs["ssl_ca_certs"] == str(ca)
    assert redis_client.options(settings.Settings(redis_url="redis://127.0.0.1:6379/0")) == {}


def test_no_redis_client_is_built_around_the_helper() -> None:
    """Every Redis client of the pipeline comes from pipeline/redis_client.py, which
    applies PIPELINE_REDIS_CA_FILE; a `from_url(...redis_url...)` elsewhere would not.
    (RedisReadModel's own fallback client is for tests; the worker passes it one.)"""
    root = Path(settings.PROJECT_ROOT)
    allowed = {"pipeline/redis_client.py", "agents/readmodel/redis_sink.py"}
    offenders = [str(p.relative_to(root)) for d in ("pipeline", "agents") for p in (root / d).rglob("*.py")
                 if str(p.relative_to(root)) not in allowed and "from_url(" in p.read_text()]
    assert offenders == []
