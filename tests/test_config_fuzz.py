"""Config files that once crashed ``kinesis-esm validate`` with a traceback (exit 1), and a fuzzer
that keeps it so: whatever the file holds, ``validate`` answers OK (exit 0) or one line naming
the file and the key (exit 2), never a traceback.

The fuzzer runs a few seconds in the suite; ``KINESIS_ESM_FUZZ=nightly`` runs it long.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinesis_esm.cli._main import main as cli_main
from kinesis_esm.config import ConfigError, load_config, parse_config

settings.register_profile(
    "config-fuzz",
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "config-fuzz-nightly",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FUZZ = settings.get_profile(
    "config-fuzz-nightly" if os.environ.get("KINESIS_ESM_FUZZ") == "nightly" else "config-fuzz"
)

ARN = "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
BASE = f"""\
[functions.orders]
handler = "kinesis_esm.examples:handler"

[[event_source_mappings]]
function_name = "orders"
event_source_arn = "{ARN}"
starting_position = "TRIM_HORIZON"
"""
HUGE_HEX = "0x" + "f" * 5000  # 6,021 decimal digits: str() of it raises
FILTER = "[[event_source_mappings.filter_criteria.filters]]\n"


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main(["validate", "--config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, path: Path, key: str) -> str:
    assert code == 2, (code, out, err)
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err[:2000]
    assert err.startswith(f"kinesis-esm: {path}"), err[:300]
    assert key in err, err[:300]
    assert "Traceback" not in err
    assert len(err) < 600, f"{len(err)} characters: {err[:300]}"
    return err


# The seven classes the fuzzer found; each once gave a traceback and exit 1.
CLASSES = {
    "integer-of-5000-digits": (
        BASE + "batch_size = " + "9" * 5000 + "\n",
        ["line 8", "more than 4,300 digits"],
    ),
    "huge-hex-batch-size": (
        BASE + f"batch_size = {HUGE_HEX}\n",
        ["event_source_mappings[0].batch_size", "less than or equal to 10000", "e+6020"],
    ),
    "huge-hex-memory-size": (
        BASE.replace('handler"\n', f'handler"\nmemory_size = {HUGE_HEX}\n', 1),
        ["functions.orders.memory_size", "between 128 and 10240", "e+6020"],
    ),
    "huge-hex-port": (
        f"[control]\nport = {HUGE_HEX}\n" + BASE,
        ["control.port", "between 0 and 65535"],
    ),
    "huge-integer-for-a-string": (
        BASE.replace('"orders"\nevent', f"{HUGE_HEX}\nevent", 1),
        ["event_source_mappings[0].function_name", "must be a string, got integer"],
    ),
    "huge-integer-for-a-boolean": (
        BASE + f"enabled = {HUGE_HEX}\n",
        ["event_source_mappings[0].enabled", "must be a boolean, got integer"],
    ),
    "huge-starting-position-timestamp": (
        BASE.replace('"TRIM_HORIZON"', '"AT_TIMESTAMP"')
        + "starting_position_timestamp = 0x"
        + "f" * 300
        + "\n",
        ["event_source_mappings[0].starting_position_timestamp", "is in the future"],
    ),
    "toml-datetime-in-a-pattern": (
        BASE + FILTER + "pattern = { data = { at = [1979-05-27T07:32:00Z] } }\n",
        [
            "event_source_mappings[0].filter_criteria.filters[0].pattern",
            "TOML datetime",
            "write it as a string",
        ],
    ),
    "deeply-nested-pattern-string": (
        BASE + FILTER + 'pattern = \'{"data":' + "[" * 2000 + "]" * 2000 + "}'\n",
        [
            "event_source_mappings[0].filter_criteria.filters[0].pattern",
            "Invalid filter pattern definition.",
            "nested",
        ],
    ),
    "deeply-nested-pattern-objects": (
        BASE + FILTER + "pattern = '" + '{"a":' * 600 + "[1]" + "}" * 600 + "'\n",
        ["filter_criteria.filters[0].pattern", "nested"],
    ),
    "toml-nested-1100-deep": (
        BASE + "batch_size = " + "[" * 1100 + "]" * 1100 + "\n",
        ["line 8", "batch_size", "nested too deeply"],
    ),
    "toml-inline-tables-nested-1100-deep": (
        "x = " + "{a=" * 1100 + "1" + "}" * 1100 + "\n" + BASE,
        ["line 1", "x", "nested too deeply"],
    ),
}


@pytest.mark.parametrize("case", list(CLASSES))
def test_each_crash_class_is_one_line_and_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = CLASSES[case]
    path = tmp_path / "fuzzed.toml"
    path.write_text(text)
    err = assert_one_line_error(*validate(path, capsys), path, expected[0])
    for words in expected[1:]:
        assert words in err, err


def test_a_pattern_table_too_deep_for_json_is_named() -> None:
    """Through the embedding API (data, not TOML): tables nested deeper than json.dumps goes."""
    pattern = Deep("table", 5000).build()
    mapping = {"function_name": "orders", "event_source_arn": ARN, "starting_position": "LATEST"}
    mapping["filter_criteria"] = {"filters": [{"pattern": pattern}]}
    document = {"functions": {"orders": {"handler": "m:h"}}, "event_source_mappings": [mapping]}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, source="embedded")
    assert str(caught.value).startswith(
        "embedded: event_source_mappings[0].filter_criteria.filters[0].pattern: "
        "Invalid filter pattern definition. ("
    ), str(caught.value)[:300]


def test_huge_integers_are_shown_bounded() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"control": {"port": 1 << 20_000}})
    assert str(caught.value) == (
        "<config>: control.port: must be between 0 and 65535, got 4.0e+6020"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config({"control": {"port": -(10**30)}})
    assert "got -1.0e+30" in str(caught.value)
    with pytest.raises(ConfigError) as caught:  # an ordinary number as it is
        parse_config({"control": {"port": 10**15}})
    assert "got 1000000000000000" in str(caught.value)


def test_one_line_even_when_a_value_holds_newlines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "newline.toml"
    path.write_text(BASE.replace('"TRIM_HORIZON"', '"TRIM\\nHORIZON\\u0007"'))
    err = assert_one_line_error(*validate(path, capsys), path, "starting_position")
    assert "TRIM\\nHORIZON\\x07" in err


# The fuzzer


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # JSON's escapes are TOML's too


def toml_value(value: Any) -> str:
    """``value`` as TOML (inline): what tomllib would read back as ``value``."""
    if isinstance(value, Deep):
        return value.toml()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 64 and value > 0:
            return f"0x{value:x}"  # no decimal conversion: it may exceed 4,300 digits
        return str(value)
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{_toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@dataclass(frozen=True)
class Deep:
    """Arrays or tables nested ``depth`` deep: built only when used, so that hypothesis never
    walks (or prints) the nesting itself."""

    kind: str
    depth: int

    def build(self) -> Any:
        value: Any = 1
        for _ in range(self.depth):
            value = [value] if self.kind == "array" else {"a": value}
        return value

    def toml(self) -> str:
        if self.kind == "array":
            return "[" * self.depth + "1" + "]" * self.depth
        return "{a = " * self.depth + "1" + "}" * self.depth


def expand(value: Any) -> Any:
    """``value`` with every Deep built."""
    if isinstance(value, Deep):
        return value.build()
    if isinstance(value, list):
        return [expand(v) for v in value]
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    return value


TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**25), max_value=10**25),
    st.integers(min_value=60, max_value=30_000).map(lambda bits: (1 << bits) - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.dates(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
) | st.builds(Deep, st.sampled_from(["array", "table"]), st.integers(1, 1500))
MAPPING_KEYS = [
    "starting_position_timestamp",
    "batch_size",
    "maximum_batching_window_in_seconds",
    "enabled",
    "parallelization_factor",
    "maximum_retry_attempts",
    "maximum_record_age_in_seconds",
    "bisect_batch_on_function_error",
    "function_response_types",
    "destination_config",
    "tumbling_window_in_seconds",
    "filter_criteria",
    "max_buffered_records",
    "on_failure_delivery",
    "uuid",
    "BatchSize",
    "no_such_key",
]
FUNCTION_KEYS = ["timeout", "memory_size", "role", "handler", "nonsense"]
SETTINGS = {
    "kinesis": ["endpoint_url", "region"],
    "state": ["path"],
    "control": ["host", "port", "auth", "token", "access_key_id", "secret_access_key"],
}
# Handlers the fuzzer may name: validate imports them, so never a module picked at random.
HANDLERS = st.sampled_from(
    [
        "kinesis_esm.examples:handler",
        "kinesis_esm.examples:no_such_attribute",
        "no_such_module_for_the_fuzzer:handler",
        "not a handler",
    ]
)


def document() -> st.SearchStrategy[dict[str, Any]]:
    mapping = st.fixed_dictionaries(
        {
            "function_name": st.just("orders") | VALUES,
            "event_source_arn": st.just(ARN) | VALUES,
            "starting_position": st.sampled_from(["TRIM_HORIZON", "AT_TIMESTAMP"]) | VALUES,
        },
        optional={key: VALUES for key in MAPPING_KEYS}
        | {
            "filter_criteria": st.fixed_dictionaries(
                {"filters": st.lists(st.fixed_dictionaries({"pattern": VALUES}), max_size=3)}
            )
            | VALUES
        },
    )
    function = st.fixed_dictionaries(
        {"handler": HANDLERS}, optional={key: VALUES for key in FUNCTION_KEYS if key != "handler"}
    )
    return st.fixed_dictionaries(
        {
            "functions": st.fixed_dictionaries({"orders": function}),
            "event_source_mappings": st.lists(mapping, min_size=0, max_size=2),
        },
        optional={
            table: st.fixed_dictionaries({}, optional={key: VALUES for key in keys})
            for table, keys in SETTINGS.items()
        },
    )


def render(doc: dict[str, Any]) -> str:
    """A document as a TOML file: settings tables, then functions, then mappings."""
    lines = []
    for table in ("kinesis", "state", "control"):
        if table in doc:
            lines.append(f"[{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in doc[table].items()]
    for name, fields in doc["functions"].items():
        lines.append(f"[functions.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in fields.items()]
    for mapping in doc["event_source_mappings"]:
        lines.append("[[event_source_mappings]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in mapping.items()]
    return "\n".join(lines) + "\n"


def assert_validate_answers(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(path, capsys)
    assert code in (0, 2), (code, out, err[:2000])
    if code == 0:
        assert re.fullmatch(rf"{re.escape(str(path))}: OK \(.*\)\n", out), out
        assert err == ""
    else:
        assert out == ""
        assert err.startswith(f"kinesis-esm: {path}"), err[:500]
        assert err.count("\n") == 1 and err.endswith("\n"), err[:2000]


@FUZZ
@given(doc=document())
def test_fuzzed_documents_validate_or_fail_in_one_line(
    doc: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fuzzed.toml"
    path.write_text(render(doc), encoding="utf-8")
    assert_validate_answers(path, capsys)


@FUZZ
@given(doc=document())
def test_fuzzed_structures_parse_or_raise_config_error(doc: dict[str, Any]) -> None:
    """The same documents given as data (the embedding API's way in): a config or a
    ConfigError, nothing else."""
    try:
        parse_config(expand(doc), source="fuzzed")
    except ConfigError as err:
        assert str(err).startswith("fuzzed: ")


SNIPPETS = st.sampled_from(
    [
        "batch_size = 0x" + "f" * 300,
        "batch_size = " + "9" * 4400,
        "x = " + "[" * 600 + "]" * 600,
        "enabled = 1979-05-27T07:32:00",
        '"quoted key" = 1',
        "[functions.orders]",
        "[[event_source_mappings]]",
        "[event_source_mappings.filter_criteria]",
        FILTER.strip(),
        "pattern = { data = { x = [1979-05-27] } }",
        'pattern = \'{"data": {"x": [1]}}\'',
        "starting_position_timestamp = 1e999",
        "handler = 'kinesis_esm.examples:handler'",
        "= broken",
        "'''",
    ]
)


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    """The base file with lines inserted, deleted or cut, and characters changed."""
    lines = BASE.splitlines()
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["insert", "delete", "cut", "char"]))
        at = draw(st.integers(0, len(lines)))
        if action == "insert":
            lines.insert(at, draw(SNIPPETS | TEXT))
        elif lines and action == "delete":
            lines.pop(min(at, len(lines) - 1))
        elif lines and action == "cut":
            line = lines[min(at, len(lines) - 1)]
            lines[min(at, len(lines) - 1)] = line[: draw(st.integers(0, len(line)))]
        elif lines:
            index = min(at, len(lines) - 1)
            line = lines[index]
            pos = draw(st.integers(0, len(line)))
            lines[index] = line[:pos] + draw(TEXT) + line[pos + 1 :]
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=mutated_text())
def test_fuzzed_texts_validate_or_fail_in_one_line(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fuzzed.toml"
    path.write_text(text, encoding="utf-8")
    assert_validate_answers(path, capsys)


@FUZZ
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_are_a_config_error(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bytes.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as err:
        assert str(err).startswith(str(path))
