"""``[coordination]``: the fleet's settings in the config file, with the errors they give."""

from __future__ import annotations

import pytest

from kinesis_esm.config import ConfigError, CoordinationConfig, DaemonConfig, parse_config


def test_defaults_are_one_local_worker() -> None:
    config = parse_config({})
    assert config.coordination == CoordinationConfig()
    assert config.coordination.backend == "local"
    assert not config.coordination.fleet
    assert DaemonConfig().coordination == CoordinationConfig()


def test_a_dynamodb_section_is_read_whole() -> None:
    config = parse_config(
        {
            "coordination": {
                "backend": "dynamodb",
                "table": "esm-leases",
                "worker_id": "host-a",
                "failover_time": 3,
                "endpoint_url": "http://127.0.0.1:8000",
                "region": "eu-west-1",
            }
        }
    )
    assert config.coordination == CoordinationConfig(
        "dynamodb", "esm-leases", "host-a", 3, "http://127.0.0.1:8000", "eu-west-1"
    )
    assert config.coordination.fleet


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"backend": "etcd"}, ["coordination.backend", "'etcd' is not one of local, dynamodb"]),
        ({"table": "ab"}, ["coordination.table", "length between 3 and 255"]),
        ({"table": "a" * 256}, ["coordination.table", "length between 3 and 255"]),
        ({"table": "leases table"}, ["coordination.table", "pattern: [a-zA-Z0-9_.-]+"]),
        ({"table": 5}, ["coordination.table", "must be a string"]),
        ({"failover_time": 0.5}, ["coordination.failover_time", "between 1.0 and 3600.0"]),
        ({"failover_time": 3601}, ["coordination.failover_time", "between 1.0 and 3600.0"]),
        ({"failover_time": "10"}, ["coordination.failover_time", "must be a number"]),
        ({"failover_time": float("nan")}, ["coordination.failover_time"]),
        ({"worker_id": "a b"}, ["coordination.worker_id", "printable ASCII without spaces"]),
        ({"worker_id": "w" * 257}, ["coordination.worker_id", "at most 256"]),
        ({"endpoint_url": "ftp://x"}, ["coordination.endpoint_url", "http:// or https://"]),
        ({"region": "moon-1"}, ["coordination.region", "not an AWS region name"]),
        ({"tabel": "x"}, ["unknown key 'tabel'", "did you mean 'table'?"]),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(
    table: dict[str, object], expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"coordination": table}, source="esm.toml")
    text = str(caught.value)
    assert text.startswith("esm.toml: ")
    for part in expected:
        assert part in text
