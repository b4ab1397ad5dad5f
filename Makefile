# orchestrator: build, run the sample services, test, lint, benchmark.
CARGO ?= cargo
BIN := target/release/orchestrator

.PHONY: build run test lint fmt bench soak clean

build:
	$(CARGO) build --release

# Supervises fixtures/services with orchestrator.json; Ctrl-C stops everything.
run: build
	exec $(BIN) run --config orchestrator.json

# Every test: lint first, then unit and integration tests.
test: lint
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

bench: build
	bash bench/run.sh

# 10,000 crash-and-restart cycles with zero backoff: descriptors, threads and RSS of the
# daemon must come back to where they were.
soak:
	ORCH_SOAK_CYCLES=10000 $(CARGO) test --release --test main restarts_leak -- --nocapture

clean:
	$(CARGO) clean
