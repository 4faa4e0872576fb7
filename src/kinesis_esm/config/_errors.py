"""ConfigError and the checks that raise it, with Lambda's messages where known.

Errors carry ``parameter`` (dotted path), ``code``, ``message`` (Lambda's text where one is
known) and ``hint`` (the allowed values, in our words).

Where the messages come from. Recorded against real AWS (LocalStack snapshot tests,
terraform-provider-aws #16113):

* ``1 validation error detected: Value null at 'startingPosition' failed to satisfy constraint:
  Member must not be null.`` (InvalidParameterValueException)
* ``1 validation error detected: Value '<v>' at 'startingPosition' failed to satisfy constraint:
  Member must satisfy enum value set: [LATEST, AT_TIMESTAMP, TRIM_HORIZON]`` (ValidationException)
* ``Timestamp only valid with StartingPosition AT_TIMESTAMP``
* ``MaximumRecordAgeInSeconds must be either -1 (forever) or between 60 and 604800 (inclusive)``
* ``Unsupported DestinationConfig parameter for given event source mapping type.`` (OnSuccess)
* ``The event source arn (" <arn> ") and function (" <name> ") provided mapping already exists.
  Please update or delete the existing mapping with UUID <uuid>`` (ResourceConflictException)

Lambda's words from documentation or third parties, not a recording: ``Invalid filter pattern
definition.`` (DOC, LocalStack) and ``Need to specify a timestamp`` (AT_TIMESTAMP without one,
quoted in awsdocs/aws-cloudformation-user-guide#334).

AWS's standard constraint format, rendered by us from the API model's ranges and lengths (the
format is AWS's; that Lambda answers each parameter with exactly this text is unconfirmed):
``1 validation error detected: Value '<v>' at '<member>' failed to satisfy constraint: Member must
have value less than or equal to <max>`` (and ``greater than or equal to``, ``length``, ``enum
value set``, ``regular expression pattern``, ``must not be null``), code ValidationException.

Our own wording (code InvalidParameterValueException): wrong types, malformed event source ARNs,
timestamps in the future or negative, more than 5 filters, destination kinds,
``max_buffered_records``, ``uuid``, the ``[functions]``, ``[kinesis]``, ``[state]`` and
``[control]`` tables, unknown keys and undeclared functions.
"""

from __future__ import annotations

import json
import math

__all__ = [
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_CONFLICT",
    "VALIDATION",
    "ConfigError",
    "NotSupportedYetError",
]

INVALID_PARAMETER_VALUE = "InvalidParameterValueException"
VALIDATION = "ValidationException"
RESOURCE_CONFLICT = "ResourceConflictException"
_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table"}


class ConfigError(ValueError):
    """A configuration value Lambda (or kinesis-esm) would reject."""

    def __init__(
        self,
        message: str,
        *,
        parameter: str,
        code: str = INVALID_PARAMETER_VALUE,
        hint: str | None = None,
        source: str | None = None,
    ) -> None:
        self.message, self.parameter, self.code = message, parameter, code
        self.hint, self.source = hint, source
        ValueError.__init__(self, str(self))

    def __str__(self) -> str:
        text = ": ".join(part for part in (self.source, self.parameter, self.message) if part)
        return f"{text} ({self.hint})" if self.hint else text

    def under(self, prefix: str, *, source: str | None = None) -> ConfigError:
        """The same error with ``parameter`` placed under ``prefix`` (the enclosing table)."""
        parameter = ".".join(part for part in (prefix, self.parameter) if part)
        return type(self)(
            self.message,
            parameter=parameter,
            code=self.code,
            hint=self.hint,
            source=source or self.source,
        )


class NotSupportedYetError(ConfigError):
    """A valid Lambda setting whose feature kinesis-esm does not implement yet."""


def _constraint(
    parameter: str, value: str, member: str, rule: str, hint: str | None = None
) -> ConfigError:
    """AWS's ValidationException for a modelled constraint; ``value`` as AWS shows it."""
    message = f"1 validation error detected: Value {value} at '{member}' failed to satisfy constraint: {rule}"  # noqa: E501
    return ConfigError(message, parameter=parameter, code=VALIDATION, hint=hint)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _number(value: int | float) -> str:
    """``value`` for a message. An integer of more than 20 digits is shown rounded ("9.9e+5000"):
    str() refuses one of more than 4,300 digits, and all of them would help nobody."""
    if isinstance(value, bool) or not isinstance(value, int) or value.bit_length() <= 64:
        return str(value)
    exponent = math.log10(abs(value))  # exact enough for any size; no decimal conversion
    whole = math.floor(exponent)
    mantissa = 10 ** (exponent - whole)
    if mantissa >= 9.95:  # would show as "10.0e+N"
        mantissa, whole = 1.0, whole + 1
    return f"{'-' if value < 0 else ''}{mantissa:.1f}e+{whole}"


def _shown(value: object) -> str:
    """A scalar as a message shows it: JSON, with huge integers in a bounded form."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _number(value)
    return json.dumps(value)


def _type_name(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "array"
    return _TOML_TYPES.get(type(value), type(value).__name__)


def _expect(name: str, value: object, kinds: tuple[type, ...], expected: str) -> None:
    """Strict types: a bool is not an integer and a float is not an integer."""
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        shown = f" {_shown(value)}" if isinstance(value, (bool, int, float, str)) else ""
        raise ConfigError(f"must be {expected}, got {_type_name(value)}{shown}", parameter=name)


def _in_range(name: str, value: object, lo: int | float, hi: int | float, member: str = "") -> None:
    """``member``: Lambda's name, for AWS's constraint message; else our own wording."""
    integral = isinstance(lo, int)
    _expect(
        name, value, (int,) if integral else (int, float), "an integer" if integral else "a number"
    )
    assert isinstance(value, (int, float))
    if lo <= value <= hi:
        return
    if not member:
        raise ConfigError(f"must be between {lo} and {hi}, got {_number(value)}", parameter=name)
    bound = f"greater than or equal to {lo}" if value < lo else f"less than or equal to {hi}"
    rule = f"Member must have value {bound}"
    raise _constraint(name, f"'{_number(value)}'", member, rule, f"allowed: {lo}..{hi}")
