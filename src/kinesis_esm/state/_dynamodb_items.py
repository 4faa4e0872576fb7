"""Lease rows as DynamoDB items, and the conditional updates written to them.

Attribute values go out in DynamoDB's typed form (``{"S": ...}``, ``{"N": ...}``,
``{"B": ...}``) and a row read back becomes a `Lease`; `_Update` builds one UpdateExpression,
its condition and only the placeholders they name (DynamoDB rejects unused ones).
"""

from __future__ import annotations

import re
from typing import Any

from ..leases._model import Checkpoint, Lease, LeaseLoad

__all__: list[str] = []


def _value(value: str | float | bytes) -> dict[str, Any]:
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bytes):
        return {"B": value}  # botocore base64-encodes it on the wire and decodes it back
    return {"N": str(value) if isinstance(value, int) else f"{value:.3f}"}


def _number(item: dict[str, Any], name: str) -> float:
    return float(item[name]["N"]) if name in item else 0.0


def _text(item: dict[str, Any], name: str) -> str | None:
    return str(item[name]["S"]) if name in item else None


def _lease_from_item(item: dict[str, Any]) -> Lease:
    sequence = _text(item, "checkpoint")
    checkpoint = None
    if sequence is not None:
        state = item.get("windowState", {}).get("B")
        checkpoint = Checkpoint(
            sequence,
            int(_number(item, "checkpointSubSequenceNumber")),
            None if state is None else bytes(state),
        )
    return Lease(
        mapping_uuid=item["mappingUuid"]["S"],
        shard_id=item["leaseKey"]["S"],
        owner=_text(item, "leaseOwner"),
        counter=int(_number(item, "leaseCounter")),
        checkpoint=checkpoint,
        parent_shard_ids=tuple(sorted(item.get("parentShardIds", {}).get("SS", ()))),
        handoff_target=_text(item, "handoffTarget"),
        owner_switches=int(_number(item, "ownerSwitchesSinceCheckpoint")),
        load=LeaseLoad(
            max(0.0, _number(item, "recordsPerSecond")), max(0.0, _number(item, "bytesPerSecond"))
        ),
    )


class _Update:
    """An UpdateExpression with its condition and placeholders, built clause by clause."""

    def __init__(self) -> None:
        self.sets: list[str] = []
        self.removes: list[str] = []
        self.condition = ""
        self.values: dict[str, str | float | bytes] = {"one": 1, "zero": 0}

    def set(self, attribute: str, expression: str, **values: str | float | bytes) -> _Update:
        self.sets.append(f"{attribute} = {expression}")
        self.values.update(values)
        return self

    def remove(self, attribute: str) -> _Update:
        self.removes.append(attribute)
        return self

    def where(self, condition: str, **values: str | float) -> _Update:
        self.condition = condition
        self.values.update(values)
        return self

    def held_by(self, lease: Lease) -> _Update:
        """The fencing condition: the row still has the owner and counter `lease` has."""
        if lease.owner is None:
            return self.where(
                "attribute_not_exists(leaseOwner) AND leaseCounter = :seen", seen=lease.counter
            )
        return self.where(
            "leaseOwner = :owner AND leaseCounter = :seen", owner=lease.owner, seen=lease.counter
        )

    def checkpoint(self, checkpoint: Checkpoint | None, switches_after: int) -> bool:
        """A new checkpoint, with its window state or, having none, without the last one's."""
        if checkpoint is not None:
            self.set("checkpoint", ":cp", cp=checkpoint.sequence)
            self.set("checkpointSubSequenceNumber", ":sub", sub=checkpoint.sub_sequence)
            self.set("ownerSwitchesSinceCheckpoint", ":sw", sw=switches_after)
            if checkpoint.window_state is None:
                self.remove("windowState")
            else:
                self.set("windowState", ":ws", ws=checkpoint.window_state)
        return checkpoint is not None

    def owner_switched(self) -> None:
        self.set(
            "ownerSwitchesSinceCheckpoint",
            "if_not_exists(ownerSwitchesSinceCheckpoint, :zero) + :one",
        )

    def params(self) -> dict[str, Any]:
        expression = "SET " + ", ".join(self.sets)
        if self.removes:
            expression += " REMOVE " + ", ".join(self.removes)
        params: dict[str, Any] = {"UpdateExpression": expression}
        if self.condition:
            params["ConditionExpression"] = self.condition
        named = set(re.findall(r":(\w+)", expression + " " + self.condition))
        params["ExpressionAttributeValues"] = {
            f":{name}": _value(value) for name, value in self.values.items() if name in named
        }
        return params
