"""`python -m ubm_build.bench` (`make bench`): see `ubm_build.bench.benchmark`."""

from ubm_build.bench.benchmark import main

main()
