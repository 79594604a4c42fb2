"""Performance, measured side by side: `make bench` (``python -m ubm_build.bench``), `make tune`
(`tune`), `make bench-cli` (`cli_vs_perf_analyzer`) and the `perf_analyzer` helpers.

Imports every layer below it; nothing imports it but the Makefile, the load tests and tests.
"""
