"""Pure decisions: no I/O and no clock (time is passed in)."""
