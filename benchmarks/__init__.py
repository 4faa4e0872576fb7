"""kinesis-esm's benchmarks: ``python -m benchmarks [throughput|latency|idle|pipeline]``."""
