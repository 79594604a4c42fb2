# ubm: `make demo` and `make test` are all a fresh clone needs. `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= quick
REPOSITORY ?= model_repository
RUN_DIR ?= .run
KSERVE_VERSION := 0.16.0
export UBM_GRPC_PORT ?= 8001
export UBM_HTTP_PORT ?= 8000
export UBM_METRICS_PORT ?= 8002

.DEFAULT_GOAL := help
.PHONY: help install demo test lint model serve serve-tls stop rollout rollback clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: sdk/pyproject.toml build/pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt -e ./sdk -e ./build
	$(BIN)/pip download --quiet --no-deps --dest $(VENV)/wheels kserve==$(KSERVE_VERSION)
	touch $@

install: $(BIN)/.installed ## create .venv with the SDK, the build tooling and the test tools

model: $(BIN)/.installed ## data -> train -> export -> model repository (PROFILE=quick|full)
	$(BIN)/ubm-build model --profile $(PROFILE) --repository $(REPOSITORY)

serve: $(BIN)/.installed ## start Triton in the background on $(REPOSITORY), wait until ready
	$(BIN)/ubm-build serve --repository $(REPOSITORY) --run-dir $(RUN_DIR) --detach

# `make serve-tls`: a local try of TLS and the client token. A throwaway CA, a certificate for
# localhost and a token are made in $(RUN_DIR)/tls (owner-only) on first use.
TLS_DIR := $(RUN_DIR)/tls
$(TLS_DIR)/server.crt:
	mkdir -p $(TLS_DIR) && chmod 700 $(TLS_DIR)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
		-subj "/CN=ubm local CA" -addext basicConstraints=critical,CA:TRUE \
		-keyout $(TLS_DIR)/ca.key -out $(TLS_DIR)/ca.crt 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
		-keyout $(TLS_DIR)/server.key -out $(TLS_DIR)/server.csr 2>/dev/null
	openssl x509 -req -in $(TLS_DIR)/server.csr -CA $(TLS_DIR)/ca.crt -CAkey $(TLS_DIR)/ca.key \
		-CAcreateserial -days 30 -out $(TLS_DIR)/server.crt 2>/dev/null \
		-extfile <(printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth")
	openssl rand -hex 24 > $(TLS_DIR)/token
	chmod 600 $(TLS_DIR)/*

serve-tls: $(BIN)/.installed $(TLS_DIR)/server.crt ## like serve, with TLS and a token (local CA in .run/tls)
	$(BIN)/ubm-build serve --repository $(REPOSITORY) --run-dir $(RUN_DIR) --detach \
		--tls-cert $(TLS_DIR)/server.crt --tls-key $(TLS_DIR)/server.key --token-file $(TLS_DIR)/token
	@echo "try: $(BIN)/ubm-client score examples/sessions.jsonl --url localhost:$(UBM_GRPC_PORT)" \
		"--root-cert $(TLS_DIR)/ca.crt --token-file $(TLS_DIR)/token"

rollout: $(BIN)/.installed ## switch the running server to the newest version in $(REPOSITORY)
	$(BIN)/ubm-build rollout --repository $(REPOSITORY) --run-dir $(RUN_DIR) --url localhost:$(UBM_GRPC_PORT)

rollback: $(BIN)/.installed ## switch the running server back to the version before
	$(BIN)/ubm-build rollback --repository $(REPOSITORY) --run-dir $(RUN_DIR) --url localhost:$(UBM_GRPC_PORT)

stop: $(BIN)/.installed ## stop the server started by `make serve`
	$(BIN)/ubm-build stop --run-dir $(RUN_DIR)

demo: model ## build the quick model, serve it, score examples/sessions.jsonl, stop
	$(BIN)/ubm-build serve --repository $(REPOSITORY) --run-dir $(RUN_DIR) --detach
	status=0; \
	$(BIN)/ubm-client score examples/sessions.jsonl --url localhost:$(UBM_GRPC_PORT) \
		-o $(RUN_DIR)/demo_scores.jsonl || status=$$?; \
	echo "first scored records ($(RUN_DIR)/demo_scores.jsonl):"; head -n 5 $(RUN_DIR)/demo_scores.jsonl; \
	$(BIN)/ubm-build stop --run-dir $(RUN_DIR); exit $$status

test: $(BIN)/.installed container-tools ## unit and integration tests (starts real tritonservers)
	$(BIN)/ruff check sdk build tests loadtest
	$(BIN)/pytest

lint: $(BIN)/.installed ## ruff
	$(BIN)/ruff check sdk build tests loadtest
	$(BIN)/ruff format --check sdk build tests loadtest

clean: ## remove generated files (keeps .venv)
	rm -rf artifacts $(RUN_DIR) reports/quick
	find $(REPOSITORY) -mindepth 1 -not -name README.md -delete

# Benchmark and load tests, each against a tritonserver it starts on free ports and stops.
# `make loadtest LOADTEST_SHAPE=spike` runs a load shape (step_ramp, spike, soak) instead of
# LOADTEST_USERS constant users; LOADTEST_BATCH is records per request; LOADTEST_ARGS passes
# more options to loadtest/run.py, e.g. the pass/fail thresholds "--max-p99-ms 250".
SLO_MS ?= 100
LOADTEST_USERS ?= 4
LOADTEST_TIME ?= 30s
LOADTEST_BATCH ?= 1
LOADTEST_SHAPE ?=
LOADTEST_ARGS ?=
MODEL_READY := $(REPOSITORY)/ubm/config.pbtxt
.PHONY: bench tune spike loadtest capacity bench-cli privacy-table perf-analyzer-deps

# A fresh clone has no model yet: these targets build the quick one first (`make model` again,
# e.g. with PROFILE=full, to replace it).
$(MODEL_READY): | $(BIN)/.installed
	$(BIN)/ubm-build model --profile $(PROFILE) --repository $(REPOSITORY)

bench: $(MODEL_READY) ## seeds' way vs PyTorch vs ONNX Runtime vs served -> results/bench.json
	$(BIN)/python -m ubm_build.bench --repository $(REPOSITORY)

tune: $(MODEL_READY) ## serve with each tuning variant, measure -> results/tuning.json
	$(BIN)/python -m ubm_build.bench.tune --repository $(REPOSITORY)

# `make spike`: the shipped queue bound (or SPIKE_ARGS, e.g. "--max-queue-size 0
# --queue-timeout-ms 500 --peak-users 64") vs unbounded queues under the spike shape, 2 rounds
# taking turns (~5 min).
SPIKE_ARGS ?=
spike: $(MODEL_READY) ## bounded vs unbounded server queues under a Locust spike -> results/spike.json
	$(BIN)/python loadtest/spike_compare.py --repository $(REPOSITORY) $(SPIKE_ARGS)

loadtest: $(MODEL_READY) ## short headless Locust run -> results/loadtest/ (CSV + HTML)
	$(BIN)/python loadtest/run.py --repository $(REPOSITORY) --batch-size $(LOADTEST_BATCH) \
		--users $(LOADTEST_USERS) --run-time $(LOADTEST_TIME) $(if $(LOADTEST_SHAPE),--shape $(LOADTEST_SHAPE)) \
		$(LOADTEST_ARGS)

capacity: $(MODEL_READY) perf-analyzer-deps ## add users until p99 > SLO_MS -> results/capacity.json, .png
	$(BIN)/python loadtest/capacity.py --repository $(REPOSITORY) --slo-ms $(SLO_MS) \
		--batch-size $(LOADTEST_BATCH)

# `make bench-cli`: ubm-client score vs NVIDIA perf_analyzer (tritonclient wheel) on the same
# ensemble, records, batch size and concurrency -> results/cli_vs_perf_analyzer.json. CI does
# not run it.
BENCH_CLI_ARGS ?=
bench-cli: $(MODEL_READY) perf-analyzer-deps ## ubm-client score vs perf_analyzer records/s
	$(BIN)/python -m ubm_build.bench.cli_vs_perf_analyzer --repository $(REPOSITORY) $(BENCH_CLI_ARGS)

# `make privacy-table`: the full profile's windows embedded once (~5-15 min on 2 cores), then
# heads fit with differential privacy per user at ε = 1, 3, 8 against the non-private head; the
# table also goes into reports/full's model card when there is one.
privacy-table: $(BIN)/.installed ## cost of DP training in test ROC-AUC -> results/privacy.json
	$(BIN)/python -m ubm_build.model.privacy_cost --profile full --reports reports/full

# The GPU check runs on a machine with an NVIDIA GPU and PyTorch but no network: `make gpu-pack`
# here puts what it needs in .gpu/ (the model, encoder in fp16) and .whl/ (cp312 wheels of the
# SDK's needs), about 48 MB; there, `make gpu-check` (or scripts/gpu_check.sh with any python3
# that has CUDA PyTorch) writes results/bench-gpu.json in under 5 minutes.
GPU_WHEELS := orjson==3.13.0 tritonclient==2.51.0 python-rapidjson==1.25
.PHONY: gpu-pack gpu-check
gpu-pack: $(MODEL_READY) ## pack the model and wheels the GPU check needs -> .gpu/, .whl/
	$(BIN)/python -m ubm_build.bench.gpu pack --model-dir artifacts/model --out .gpu/model
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform any -d .whl $(GPU_WHEELS)

gpu-check: ## on a GPU machine: PyTorch CUDA fp32/fp16 rows and parity -> results/bench-gpu.json
	bash scripts/gpu_check.sh

# perf_analyzer needs Debian's libb64-0d (installed with apt where we may) and libcudart.so.12
# from nvidia-cuda-runtime-cu12 (requirements-dev.txt). Where they cannot be installed,
# `make capacity` skips its cross-check and says why; `make bench-cli` fails and says why.
perf-analyzer-deps: $(BIN)/.installed
	@ldconfig -p | grep -q libb64 || apt-get install -y -qq libb64-0d \
		|| { apt-get update -qq && apt-get install -y -qq libb64-0d; } \
		|| echo "could not install libb64-0d: perf_analyzer will not run"
	@$(BIN)/python -c 'import nvidia.cuda_runtime' 2>/dev/null \
		|| $(BIN)/pip install --quiet "$$(grep -E '^nvidia-cuda-runtime-cu12==' requirements-dev.txt)"

# Deployment (README, Deploying at scale). `make deploy-check` renders the Helm chart with its
# default and deploy/helm/ubm/ci/*-values.yaml values (DEPLOY_VALUES=my.yaml adds yours) and
# validates every manifest, KServe's included; `make test` runs the same checks. The images build
# with podman or docker where their base images can be pulled: MODEL_REPOSITORY=model_repository
# bakes the repository in (else mount one at /models).
CONTAINER_TOOL ?= $(shell command -v podman || command -v docker)
IMAGE_TAG ?= 0.1.0
IMAGE_ARGS = $(if $(MODEL_REPOSITORY),--build-arg MODEL_REPOSITORY=$(MODEL_REPOSITORY))
DEPLOY_VALUES ?=
.PHONY: deploy-check image-cpu image-gpu image-check container-tools replica-figures
deploy-check: $(BIN)/.installed ## render the Helm chart and validate every manifest (Kubernetes, KServe)
	$(BIN)/python -m ubm_build.deploy $(foreach v,$(DEPLOY_VALUES),--values $(v))

image-cpu: ## build the ubm-cpu image (deploy/images/Dockerfile.cpu) with podman or docker
	$(CONTAINER_TOOL) build -f deploy/images/Dockerfile.cpu $(IMAGE_ARGS) -t ubm-cpu:$(IMAGE_TAG) .

image-gpu: ## build the ubm-gpu image on NVIDIA's Triton 24.10 (deploy/images/Dockerfile.gpu)
	$(CONTAINER_TOOL) build -f deploy/images/Dockerfile.gpu $(IMAGE_ARGS) -t ubm-gpu:$(IMAGE_TAG) .

replica-figures: $(BIN)/.installed ## three replicas on loopback, one killed mid-run -> results/replicas.json
	UBM_REPLICA_FIGURES=results/replicas.json $(BIN)/pytest tests/integration/test_replicas.py -q -s

image-check: $(MODEL_READY) container-tools ## build the CPU image, serve the repository from it, score through it
	bash scripts/image_check.sh

# tests/integration/test_image.py builds and runs the CPU image with podman, buildah and
# debootstrap: installed with apt where we may; where they cannot be, that test skips and says why.
container-tools:
	@command -v podman >/dev/null && command -v buildah >/dev/null && command -v debootstrap >/dev/null \
		|| apt-get install -y -qq podman buildah debootstrap >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq podman buildah debootstrap >/dev/null 2>&1; } \
		|| echo "could not install podman, buildah and debootstrap: the image test will skip"
