"""The TOML layer of the configuration: tables and keys in, validated ``DaemonConfig`` out.

Layout (a contract)::

    [kinesis]                     # optional: endpoint_url, region
    [state]                       # optional: path
    [control]                     # optional: host, port, auth, access_key_id,
                                  #   secret_access_key, token
    [coordination]                # optional: backend, table, worker_id, failover_time,
                                  #   endpoint_url, region
    [functions.<name>]            # handler = "package.module:attr", timeout, memory_size, role
    [[event_source_mappings]]     # Lambda's CreateEventSourceMapping parameters, in snake_case
    [event_source_mappings.destination_config.on_failure]   # destination
    [[event_source_mappings.filter_criteria.filters]]       # pattern (a JSON string or a table)

Every unknown key is an error naming the key and its table, with the closest valid name when
there is one (Lambda's CamelCase spelling, ``BatchSize``, is recognised and pointed to
``batch_size``). ``on_success`` gets Lambda's own answer. A TOML datetime with an offset is
accepted for ``starting_position_timestamp``.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from ._coordination import CoordinationConfig
from ._criteria import Filter, FilterCriteria, check_filter
from ._daemon import ControlConfig, DaemonConfig, FunctionConfig, KinesisConfig, StateConfig
from ._errors import ConfigError
from ._mapping import DestinationConfig, EventSourceMappingConfig, OnFailure

__all__ = ["load_config", "parse_config"]

TOP_LEVEL_KEYS = (
    "kinesis",
    "state",
    "control",
    "coordination",
    "functions",
    "event_source_mappings",
)
MAPPING_KEYS = tuple(f.name for f in dataclasses.fields(EventSourceMappingConfig))
FUNCTION_KEYS = tuple(f.name for f in dataclasses.fields(FunctionConfig) if f.name != "name")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_DATES = (datetime.datetime, datetime.date, datetime.time)
_KEY = re.compile(r"\s*([^\s=\[{#][^=]*?)\s*=")  # the key of a "key = value" line
_MAX_DIGITS = 4300  # Python's limit on converting a decimal string to int
_LONG_INTEGER = re.compile(rf"[0-9](?:_?[0-9]){{{_MAX_DIGITS},}}")
_BAD_PATTERN = "Invalid filter pattern definition."  # Lambda's words
_DEEP = "the pattern is nested too deeply"


def _suggestion(key: str, valid: Sequence[str]) -> str | None:
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower().replace("-", "_").replace(".", "_")
    if snake in valid:
        return snake
    close = difflib.get_close_matches(snake, valid, n=1, cutoff=0.6)
    return close[0] if close else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _table(value: object, path: str, valid: Sequence[str]) -> Mapping[str, Any]:
    """``value`` as a table whose keys are all in ``valid``."""
    if not isinstance(value, Mapping):
        kind = "array" if isinstance(value, list) else type(value).__name__
        raise ConfigError(f"must be a table, got {kind}", parameter=path)
    for key in value:
        if key not in valid:
            where = f"in table {path}" if path else "at the top level"
            close = _suggestion(str(key), valid)
            hint = f"did you mean '{close}'?" if close else f"valid keys: {', '.join(valid)}"
            message = f"unknown key '{key}' {where}"
            raise ConfigError(message, parameter=_join(path, str(key)), hint=hint)
    return value


def _timestamp(value: object) -> object:
    """TOML datetimes become Unix seconds; numbers pass through (checked by the dataclass)."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ConfigError(
                f"the datetime {value.isoformat()} has no UTC offset",
                parameter="starting_position_timestamp",
                hint="write e.g. 2024-01-01T00:00:00Z, or Unix seconds",
            )
        return value.timestamp()
    if isinstance(value, (datetime.date, datetime.time)):
        message = f"must be Unix seconds or an offset datetime, got {value.isoformat()}"
        raise ConfigError(message, parameter="starting_position_timestamp")
    return value


def _destination_config(value: object, path: str) -> DestinationConfig:
    if isinstance(value, Mapping) and ("on_success" in value or "OnSuccess" in value):
        key = "on_success" if "on_success" in value else "OnSuccess"
        raise ConfigError(
            "Unsupported DestinationConfig parameter for given event source mapping type.",
            parameter=f"{path}.{key}",
            hint="Kinesis mappings take only on_failure",
        )
    table = _table(value, path, ("on_failure",))
    if "on_failure" not in table:
        return DestinationConfig()
    on_failure = _table(table["on_failure"], f"{path}.on_failure", ("destination",))
    return DestinationConfig(OnFailure(on_failure.get("destination")))


def _filter_criteria(value: object, path: str) -> FilterCriteria:
    filters = _table(value, path, ("filters",)).get("filters", [])
    if not isinstance(filters, list):
        message = (
            "must be an array of tables: write [[event_source_mappings.filter_criteria.filters]]"
        )
        raise ConfigError(message, parameter=f"{path}.filters")
    parsed = []
    for i, raw in enumerate(filters):
        where = f"{path}.filters[{i}]"
        if "pattern" not in (table := _table(raw, where, ("pattern",))):
            raise ConfigError("is required", parameter=f"{where}.pattern")
        if isinstance(pattern := table["pattern"], Mapping):
            pattern = _pattern_json(pattern, f"{where}.pattern")
        flt = Filter(pattern)
        try:  # checked here too, to name a pattern nested too deeply for the checker
            check_filter(i, flt)
        except RecursionError:
            raise ConfigError(_BAD_PATTERN, parameter=f"{where}.pattern", hint=_DEEP) from None
        except ConfigError as err:
            raise err.under(path.removesuffix(".filter_criteria")) from None
        parsed.append(flt)
    return FilterCriteria(tuple(parsed))


class _NotJSON(TypeError):
    def __init__(self, value: object) -> None:
        super().__init__(value)
        self.value = value


def _not_json(value: object) -> object:
    raise _NotJSON(value)


def _pattern_json(pattern: Mapping[str, Any], parameter: str) -> str:
    """A pattern written as a TOML table, as the JSON text Lambda takes."""
    try:
        return json.dumps(pattern, default=_not_json)
    except _NotJSON as exc:  # a TOML date or time: JSON has none
        value = exc.value
        shown = value.isoformat() if isinstance(value, _DATES) else type(value).__name__
        hint = f'write it as a string: "{shown}"'
        message = f"a TOML {type(value).__name__} ({shown}) is not a JSON value"
        raise ConfigError(message, parameter=parameter, hint=hint) from None
    except RecursionError:
        raise ConfigError(_BAD_PATTERN, parameter=parameter, hint=_DEEP) from None
    except ValueError:  # json refuses an integer of more than 4,300 digits
        hint = "it holds an integer too long for JSON"
        raise ConfigError(_BAD_PATTERN, parameter=parameter, hint=hint) from None


def _mapping(value: object, path: str) -> EventSourceMappingConfig:
    kwargs = dict(_table(value, path, MAPPING_KEYS))
    if "event_source_arn" not in kwargs:
        message = "is required: the ARN of the Kinesis stream (or of its EFO consumer)"
        raise ConfigError(message, parameter=f"{path}.event_source_arn")
    kwargs.setdefault("function_name", None)  # Lambda's "Value null at 'functionName'" error
    kwargs.setdefault("starting_position", None)  # likewise for startingPosition
    if isinstance(types := kwargs.get("function_response_types"), list):
        kwargs["function_response_types"] = tuple(types)
    if "destination_config" in kwargs:
        where = f"{path}.destination_config"
        kwargs["destination_config"] = _destination_config(kwargs["destination_config"], where)
    if "filter_criteria" in kwargs:
        where = f"{path}.filter_criteria"
        kwargs["filter_criteria"] = _filter_criteria(kwargs["filter_criteria"], where)
    try:
        if "starting_position_timestamp" in kwargs:
            stamp = _timestamp(kwargs["starting_position_timestamp"])
            kwargs["starting_position_timestamp"] = stamp
        return EventSourceMappingConfig(**kwargs)
    except ConfigError as err:
        raise err.under(path) from None
    except RecursionError:  # only a pattern nests; checked above, but at a shallower stack
        where = f"{path}.filter_criteria"
        raise ConfigError(_BAD_PATTERN, parameter=where, hint=_DEEP) from None


def _settings(table: Mapping[str, object], key: str, cls: type[Any]) -> Any:
    """The [kinesis], [state] or [control] table as its dataclass."""
    fields = _table(table[key], key, tuple(f.name for f in dataclasses.fields(cls)))
    try:
        return cls(**fields)
    except ConfigError as err:
        raise err.under(key) from None


def _function(name: str, value: object) -> FunctionConfig:
    path = f"functions.{name}"
    fields = _table(value, path, FUNCTION_KEYS)
    try:
        return FunctionConfig(name, **fields)
    except ConfigError as err:
        raise err.under(path) from None


def _parse(data: Mapping[str, object]) -> DaemonConfig:
    table = _table(data, "", TOP_LEVEL_KEYS)
    settings = (
        ("kinesis", KinesisConfig),
        ("state", StateConfig),
        ("control", ControlConfig),
        ("coordination", CoordinationConfig),
    )
    parts = {key: _settings(table, key, cls) for key, cls in settings if key in table}
    functions = table.get("functions", {})
    if not isinstance(functions, Mapping):
        raise ConfigError("must be a table of [functions.<name>] tables", parameter="functions")
    mappings = table.get("event_source_mappings", [])
    if not isinstance(mappings, list):
        message = "must be an array of tables: write [[event_source_mappings]]"
        raise ConfigError(message, parameter="event_source_mappings")
    return DaemonConfig(
        functions=tuple(_function(str(name), raw) for name, raw in functions.items()),
        event_source_mappings=tuple(
            _mapping(raw, f"event_source_mappings[{i}]") for i, raw in enumerate(mappings)
        ),
        **parts,
    )


def parse_config(data: Mapping[str, object], *, source: str = "<config>") -> DaemonConfig:
    """Validate TOML-shaped data; every ConfigError carries ``source`` and a dotted parameter."""
    try:
        return _parse(data)
    except ConfigError as err:
        raise err.under("", source=source) from None
    except RecursionError:  # a last guard: every nesting a check walks is caught nearer
        message = "a value is nested too deeply"
        raise ConfigError(message, parameter="", source=source) from None


def load_config(path: str | os.PathLike[str]) -> DaemonConfig:
    """Read ``path`` with tomllib and validate it; syntax errors name the file and line."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            text = file.read().decode()
        data = tomllib.loads(text)
    except OSError as exc:
        message = f"cannot read the configuration file: {exc.strerror or exc}"
        raise ConfigError(message, parameter="", source=source) from None
    except UnicodeDecodeError as exc:
        message = f"the configuration file is not UTF-8 text: {exc.reason}"
        raise ConfigError(message, parameter="", source=source) from None
    except RecursionError:  # tomllib parses arrays and inline tables recursively
        line, key = _deepest_nesting(text)
        message = f"invalid TOML at line {line}: arrays or inline tables nested too deeply"
        raise ConfigError(message, parameter=key, source=f"{source}:{line}") from None
    except tomllib.TOMLDecodeError as exc:
        reason = _TOML_POSITION.sub("", str(exc))
        if (m := _TOML_POSITION.search(str(exc))) is not None:
            at, column = m.groups()
            message = f"invalid TOML at line {at}, column {column}: {reason}"
            raise ConfigError(message, parameter="", source=f"{source}:{at}") from None
        raise ConfigError(f"invalid TOML: {reason}", parameter="", source=source) from None
    except ValueError:  # not a TOMLDecodeError: int() refuses more than 4,300 digits
        if (m := _LONG_INTEGER.search(text)) is None:
            raise ConfigError("invalid TOML", parameter="", source=source) from None
        line = text.count("\n", 0, m.start()) + 1
        message = f"invalid TOML at line {line}: an integer of more than {_MAX_DIGITS:,} digits"
        raise ConfigError(message, parameter="", source=f"{source}:{line}") from None
    return parse_config(data, source=source)


def _deepest_nesting(text: str) -> tuple[int, str]:
    """The line where arrays and inline tables nest deepest, and the key whose value that is
    (best effort, for the message: comments and strings are skipped, multi-line ones too)."""
    depth = deepest = 0
    line = where = opened = key_line = 1
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\n":
            line += 1
        elif char == "#":
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        elif char in "\"'":
            quote = text[i : i + 3] if text[i : i + 3] in ('"""', "'''") else char
            end = i + len(quote)
            while end < n and not text.startswith(quote, end):
                if char == '"' and text[end] == "\\":
                    end += 1  # an escape in a basic string
                end += 1
            line += text.count("\n", i, end)
            i = end + len(quote)
            continue
        elif char in "[{":
            opened = line if depth == 0 else opened
            depth += 1
            if depth > deepest:
                deepest, where, key_line = depth, line, opened
        elif char in "]}":
            depth = max(0, depth - 1)
        i += 1
    key = _KEY.match(text.splitlines()[key_line - 1]) if text else None
    return where, key[1] if key else ""
