"""Performance, measured side by side: a library of measurements and three thin commands.

The library:

    errors          BenchError, PerfAnalyzerError: plain exceptions
    workload        the records measured: test-day sessions, batches, records files
    rows            Row (records/s, p50/p99), summaries, median round, ratios, latency target
    in_process      rows scored in this process: seeds' way, PyTorch, ONNX Runtime
    served          rows scored by a tritonserver through UbmClient; what a repository serves
    processes       child processes with their wall and CPU time
    perf_analyzer   NVIDIA perf_analyzer: find it, feed it our records, run it, read its report
    cli_client      `ubm-client score` timed from outside
    comparison      `ubm-client score` against perf_analyzer in alternating rounds
    report          rich tables, log lines and the results JSON

The commands, each a click `main` that alone turns library errors into click's (`commands`):
`benchmark` (``python -m ubm_build.bench``, `make bench`), `tune` (`make tune`) and
`cli_vs_perf_analyzer` (`make bench-cli`). The library modules never import a command module.

Imports every layer below it; nothing imports it but the Makefile, the load tests and tests.
"""
