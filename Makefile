# orchestrator: build, run the sample services, test, lint, benchmark.
CARGO ?= cargo
BIN ?= target/release/orchestrator
CONFIG ?= orchestrator.json
# `make install` puts everything under $(DESTDIR)$(PREFIX).
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: build run install test lint fmt bench soak chaos clean

build:
	$(CARGO) build --release

# Built when missing; `make && sudo make install` installs what was just built without
# asking root's environment for a Rust toolchain.
$(BIN):
	$(CARGO) build --release

# Supervises fixtures/services with orchestrator.json; Ctrl-C stops everything.
# A second Ctrl-C kills every service at once and the orchestrator exits 1, as asked:
# that exit is not a failure of the recipe, so it is not reported as one ("make: ***
# Error 1" reads like a build failure). Only an exit 1 after a Ctrl-C is mapped; any
# other failure still fails the recipe. (The shell traps SIGINT only to note it: the
# whole foreground group gets Ctrl-C, so the orchestrator sees it as before.)
run: build
	@trap 'interrupted=1' INT; $(BIN) run --config $(CONFIG); code=$$?; \
	if [ $$code -eq 1 ] && [ -n "$$interrupted" ]; then exit 0; fi; exit $$code

# The binary, the man page (generated from the --help text, so the two cannot drift
# apart) and the completion scripts, where man, bash-completion, zsh and fish look.
install: $(BIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions \
		$(DESTDIR)$(PREFIX)/share/zsh/site-functions \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/orchestrator
	$(BIN) --help-man > $(DESTDIR)$(PREFIX)/share/man/man1/orchestrator.1
	$(BIN) completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/orchestrator
	$(BIN) completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_orchestrator
	$(BIN) completion fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/orchestrator.fish

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

# Randomized black-box run of the real binary (tests/chaos.rs) for CHAOS_SECONDS over
# consecutive seeds from CHAOS_SEED (default: from the clock). A violation prints the
# seed and the last operations; `make chaos CHAOS_SEED=N` replays that seed.
CHAOS_SECONDS ?= 900
CHAOS_SEED ?=
chaos:
	ORCH_CHAOS_SECONDS=$(CHAOS_SECONDS) ORCH_CHAOS_SEED=$(CHAOS_SEED) \
		$(CARGO) test --release --test main chaos::long_run -- --nocapture

clean:
	$(CARGO) clean
