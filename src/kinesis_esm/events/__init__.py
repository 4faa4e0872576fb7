"""What flows through the pipeline: the Record as read from a shard, and Lambda's event."""

from ._lambda import MAX_EVENT_BYTES, EventSource, build_event
from ._record import Record

__all__ = ("MAX_EVENT_BYTES", "EventSource", "Record", "build_event")
