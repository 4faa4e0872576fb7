"""Test support: real emulators on 127.0.0.1, a TCP fault proxy, Kinesis helpers."""
