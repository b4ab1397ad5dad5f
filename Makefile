# orchestrator: build, run the sample services, test, lint, benchmark.
CARGO ?= cargo
BIN := target/release/orchestrator

.PHONY: build run test lint fmt bench soak fuzz clean

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

# Coverage-guided fuzzing of the parsers that read untrusted bytes (fuzz/), FUZZ_SECONDS
# per target. Not part of `test`: it needs cargo-fuzz (installed here if missing) and
# nightly-only sanitizer flags, which RUSTC_BOOTSTRAP lets the stable toolchain take.
# New inputs go to fuzz/target/corpus; the committed seeds in fuzz/corpus stay as they are.
# A crash stops the run and leaves its input in fuzz/artifacts/TARGET/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= config control log_lines
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p target/corpus/$$t && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t target/corpus/$$t corpus/$$t -- \
			$$(test -f dict/$$t.dict && echo -dict=dict/$$t.dict) \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

clean:
	$(CARGO) clean
