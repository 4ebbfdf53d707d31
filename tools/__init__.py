"""Development and measurement tools, apart from the runtime: the simulator, the local
Kafka and Redis, the demo, the benchmarks, the fraud evaluation and the soak. Installed
with the `tools` extra; the worker image holds `pipeline/` and `agents/` only."""
