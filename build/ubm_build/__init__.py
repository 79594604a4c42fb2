"""ubm-build: from Taobao events to a served Triton ensemble, in layers.

Each package may import only from the packages above it in this list (and from the SDK, `ubm`):

    paths      where the project's files are
    inputs     record -> model inputs (behaviour text, session features), copied into Triton
    data       Taobao UserBehavior CSV -> labelled session examples, split by time
    model      the network, training, calibration, baselines, quality, the model card
    export     the encoder for each engine (ONNX Runtime, OpenVINO, TensorRT) and precision,
               parity, ROC-AUC and batch-dependence checks
    serving    the Triton model repository, its python-backend models, the local tritonserver
               and `ubm-serve` (its commands, which the CPU image runs)
    bench      measurements: in process and served, tuning, perf_analyzer, capacity helpers
    deploy     the Kubernetes manifests under deploy/ rendered and validated (`make deploy-check`)
    steps      the build steps that `ubm-build` runs, each reading and writing files
    cli        the `ubm-build` command

The python-backend models (`serving/triton_models`) import nothing of ubm_build but each other,
so any layer may run them in process: the checks and benchmarks run what the server runs.

Only the command modules (`cli`, `serving/cli`, and the `python -m` entry points) raise click
exceptions; library functions raise their own errors.
"""
