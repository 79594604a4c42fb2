"""The bench library's errors: plain exceptions, which only the commands turn into click's
(`ubm_build.bench.commands.click_errors`)."""


class BenchError(Exception):
    """A measurement could not be made: no records to measure, a request or a client failed."""


class PerfAnalyzerError(BenchError):
    """perf_analyzer could not be run, or failed."""
