# orchestrator: build, run the sample services, test, lint, benchmark.
CARGO ?= cargo
BIN ?= target/release/orchestrator
CONFIG ?= orchestrator.json
# `make install` puts everything under $(DESTDIR)$(PREFIX).
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: build run install man size test lint layers fmt bench soak props fuzz chaos clean static \
	static-debug

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DOCDIR = $(PREFIX)/share/doc/orchestrator

# Static builds name their target explicitly, so that RUSTFLAGS reach the binary and
# never a build script; musl where its target is installed, else glibc linked
# statically. Their own target directory: switching between static and dynamic builds
# rebuilds nothing, and a test can build the static binary while cargo test holds the
# lock of target/.
HOST := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
MUSL := $(firstword $(subst -, ,$(HOST)))-unknown-linux-musl
STATIC_TARGET := $(if $(shell rustup target list --installed 2>/dev/null | grep -x '$(MUSL)'),$(MUSL),$(HOST))
STATIC_DIR := target/static
STATIC_BUILD = CARGO_TARGET_DIR=$(STATIC_DIR) RUSTFLAGS='-C target-feature=+crt-static' \
	$(CARGO) build

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

# The man pages, orchestrator(1) and orchestrator.json(5), are generated from the
# reference in docs/ (the same text, so the two cannot drift apart) by a POSIX awk
# script on the build host: nothing runs the target binary, so a cross-compiled
# install works. $(call MAN1,FILE) and $(call MAN5,FILE) write one page each.
MD2MAN = awk -v version='$(VERSION)' -v docdir='$(DOCDIR)'
MAN1 = $(MD2MAN) -v title=ORCHESTRATOR -v section=1 \
	-v name='orchestrator - a process supervisor for small Linux machines' \
	-v synopsis='orchestrator run [--config FILE] [--services-dir DIR] [--log-level LEVEL]\n    [--log-format text|json] [--daemon] [--pidfile FILE] [--socket PATH]\norchestrator check|discover [--config FILE] [--services-dir DIR]\norchestrator status [NAME] [--json]\norchestrator start|stop|restart NAME\norchestrator reload [--dry-run]\norchestrator logs NAME [-n LINES] [-f]\norchestrator metrics|shutdown\norchestrator upgrade NAME PATH\norchestrator rollback NAME\norchestrator upgrade-self PATH\norchestrator completion bash|zsh|fish\norchestrator --help|--version' \
	-f contrib/md2man.awk docs/cli.md > $(1)
MAN5 = $(MD2MAN) -v title=ORCHESTRATOR.JSON -v section=5 \
	-v name='orchestrator.json - the configuration of orchestrator' \
	-v synopsis='/etc/orchestrator/orchestrator.json\n./orchestrator.json\n$$ORCHESTRATOR_CONFIG\norchestrator --config FILE' \
	-f contrib/md2man.awk docs/configuration.md > $(1)

man: target/man/orchestrator.1 target/man/orchestrator.json.5

target/man/orchestrator.1: docs/cli.md contrib/md2man.awk Cargo.toml
	@mkdir -p $(@D)
	$(call MAN1,$@)

target/man/orchestrator.json.5: docs/configuration.md contrib/md2man.awk Cargo.toml
	@mkdir -p $(@D)
	$(call MAN5,$@)

# The binary, the man pages, the reference, the completion scripts and the files of
# contrib/ for init systems, where man, bash-completion, zsh, fish, systemd and people
# look. The pages are written straight into place (a `sudo make install` leaves no
# root-owned file in target/). Paths in the init files follow PREFIX.
CONTRIB_DIR = $(DESTDIR)$(PREFIX)/share/orchestrator/contrib
AT_PREFIX = sed 's|/usr/local/bin/orchestrator|$(PREFIX)/bin/orchestrator|g'
install: $(BIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
		$(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(DOCDIR) $(CONTRIB_DIR) \
		$(DESTDIR)$(PREFIX)/lib/systemd/system \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions \
		$(DESTDIR)$(PREFIX)/share/zsh/site-functions \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/orchestrator
	$(call MAN1,$(DESTDIR)$(PREFIX)/share/man/man1/orchestrator.1)
	$(call MAN5,$(DESTDIR)$(PREFIX)/share/man/man5/orchestrator.json.5)
	install -m 644 docs/*.md $(DESTDIR)$(DOCDIR)/
	$(AT_PREFIX) contrib/orchestrator.service > \
		$(DESTDIR)$(PREFIX)/lib/systemd/system/orchestrator.service
	for f in orchestrator.init orchestrator.openrc inittab; do \
		$(AT_PREFIX) contrib/$$f > $(CONTRIB_DIR)/$$f || exit 1; \
	done
	chmod 755 $(CONTRIB_DIR)/orchestrator.init $(CONTRIB_DIR)/orchestrator.openrc
	install -m 644 contrib/logrotate contrib/Dockerfile $(CONTRIB_DIR)/
	@# The completion scripts come from the binary itself: skipped, loudly, when it
	@# cannot run here (built for another machine).
	@if $(BIN) --version >/dev/null 2>&1; then \
		$(BIN) completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/orchestrator && \
		$(BIN) completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_orchestrator && \
		$(BIN) completion fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/orchestrator.fish; \
	else \
		echo "make install: $(BIN) does not run on this machine: no completion scripts installed" >&2; \
	fi

# A statically linked release binary at target/static/orchestrator: no shared library,
# no NSS (users and groups come from /etc/passwd and /etc/group).
static:
	$(STATIC_BUILD) --release --target $(STATIC_TARGET)
	cp $(STATIC_DIR)/$(STATIC_TARGET)/release/orchestrator $(STATIC_DIR)/orchestrator
	@ls -l $(STATIC_DIR)/orchestrator

# The static debug build the PID 1 tests (tests/empty_root.rs) run; built here so that
# its compile does not run beside the other tests (the test builds it too, a no-op then).
# glibc, the host's own target, as the test expects.
static-debug:
	$(STATIC_BUILD) --target $(HOST)

# Every test: lint first, then unit and integration tests. Nothing is installed: a
# test whose program (a real daemon, grpcio) is missing skips, and the run ends with one
# line naming every skip (tests/util/packages.rs records them in SKIPPED). With
# ORCH_REQUIRE_PACKAGES=1 (as .ci/run sets) a missing program fails its test instead.
SKIPPED := $(or $(CARGO_TARGET_DIR),target)/tmp/skipped-tests.txt
test: lint static-debug
	@rm -f $(SKIPPED)
	@$(CARGO) test --all-targets; code=$$?; \
	if [ -s $(SKIPPED) ]; then \
		printf '\n*** %s SKIPPED (programs not installed): %s ***\n' \
			"$$(wc -l < $(SKIPPED) | tr -d ' ') test(s)" "$$(sort $(SKIPPED) | paste -sd';' - | sed 's/;/; /g')"; \
	fi; exit $$code

lint: layers
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Layers import downwards only (ARCHITECTURE.md): lists every upward import, fails on one.
layers:
	@sh scripts/layers.sh -v

fmt:
	$(CARGO) fmt

bench: build
	bash bench/run.sh

# The one place that states the binary's size: the line after the marker in
# BENCHMARKS.md, rewritten from the binary just built (release profile: stripped).
size: build
	@bytes=$$(wc -c < $(BIN) | tr -d ' '); \
	line="$$(date -u +%Y-%m-%d), $(HOST), orchestrator $(VERSION): the stripped release binary is $$bytes bytes ($$(awk "BEGIN { printf \"%.3f\", $$bytes / 1048576 }") MiB)."; \
	awk -v line="$$line" 'put { print line; put = 0; next } { print } /^<!-- size: written by `make size`/ { put = 1 }' \
		BENCHMARKS.md > BENCHMARKS.md.tmp && mv BENCHMARKS.md.tmp BENCHMARKS.md; \
	echo "$$line"

# 10,000 crash-and-restart cycles with zero backoff: descriptors, threads and RSS of the
# daemon must come back to where they were.
soak:
	ORCH_SOAK_CYCLES=10000 $(CARGO) test --release --test main restarts_leak -- --nocapture

# The lifecycle's property test at length: PROP_CASES random event sequences (default
# ten million, a hundred times what `make test` runs), from seed PROP_SEED.
PROP_CASES ?= 10000000
PROP_SEED ?= 1
props:
	ORCH_PROP_CASES=$(PROP_CASES) ORCH_PROP_SEED=$(PROP_SEED) $(CARGO) test --release --lib \
		random_sequences_keep_the_invariants -- --nocapture

# Coverage-guided fuzzing of the parsers that read untrusted bytes (fuzz/), FUZZ_SECONDS
# per target. Not part of `test`: it needs cargo-fuzz (installed here if missing) and
# nightly-only sanitizer flags, which RUSTC_BOOTSTRAP lets the stable toolchain take.
# New inputs go to fuzz/target/corpus; the committed seeds in fuzz/corpus stay as they are.
# A crash stops the run and leaves its input in fuzz/artifacts/TARGET/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= config control log_lines hpack http2_answer
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p target/corpus/$$t && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t target/corpus/$$t corpus/$$t -- \
			$$(test -f dict/$$t.dict && echo -dict=dict/$$t.dict) \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

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
