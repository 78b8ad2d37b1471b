# edgesync: build, test and demo. Every target sets the machine up first
# (scripts/setup.sh: idempotent, quick when already done).

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

# scripts/setup.sh writes where it put things into $(ENV_MK). The values are
# read when a recipe runs, after `setup` (every target's first prerequisite)
# has written them, not when make starts: on a fresh machine the file does
# not exist yet at that moment. Set any of them on the command line to override.
ENV_MK := target/edgesync-env.mk
from_setup = $(or $(shell sed -n 's/^$(1) := //p' $(ENV_MK) 2>/dev/null),$(error $(1) unknown: run `make setup` first))
PG18_CONFIG ?= $(call from_setup,PG18_CONFIG)
PG15_CONFIG ?= $(call from_setup,PG15_CONFIG)
PG_USER ?= $(call from_setup,PG_USER)
# pgrx's test cluster data directories: short paths (the socket lives there)
PGTEST_DATA_18 ?= /tmp/edgesync-pgtest-18
PGTEST_DATA_15 ?= /tmp/edgesync-pgtest-15

.PHONY: setup test test-unit test-fuzz test-pg18 test-pg15 test-integration test-integration-pg15 install-pg18 install-pg15 install-pg18-release bench bench-smoke bench-apply demo demo-stop mutants clean

setup:
	@bash scripts/setup.sh

# Every tier: pure unit tests, #[pg_test] on 18 and 15, multi-node tests on 18,
# the forwarder's multi-node tests on 15 too (it decodes differently there),
# and the benchmark once, small (every row still measured; no ratio asserted).
test: setup
	@$(MAKE) --no-print-directory test-unit test-fuzz test-pg18 test-pg15 test-integration test-integration-pg15 bench-smoke

test-unit:
	EDGESYNC_PG_CONFIG=$(PG18_CONFIG) cargo test --lib model::

# The fuzz targets (fuzz/README.md) for FUZZ_SECONDS each, under a memory
# limit: a decoder that trusts a size a batch claims (the batch_decode
# target feeds it compressed bombs) runs out of it and fails the run. Stable
# Rust, with libFuzzer's coverage flags; the corpus grows in fuzz/corpus/.
FUZZ_SECONDS ?= 10
FUZZ_RSS_MB ?= 192
FUZZ_RUSTFLAGS := --cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
	-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
	-Cllvm-args=-sanitizer-coverage-trace-compares
test-fuzz:
	cd fuzz && CXX=clang++ RUSTFLAGS="$(FUZZ_RUSTFLAGS)" cargo build --release --target $$(rustc -vV | sed -n 's/^host: //p')
	@set -e; host=$$(rustc -vV | sed -n 's/^host: //p'); for t in batch_decode pgoutput_parse capture_read; do \
		mkdir -p fuzz/corpus/$$t fuzz/artifacts; \
		echo "fuzz $$t: $(FUZZ_SECONDS) s, rss limit $(FUZZ_RSS_MB) MB"; \
		fuzz/target/$$host/release/$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=$(FUZZ_RSS_MB) \
			-artifact_prefix=fuzz/artifacts/ -print_final_stats=1 fuzz/corpus/$$t 2>&1 | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|ERROR|SUMMARY' ; \
		test $${PIPESTATUS[0]} -eq 0; \
	done

# EDGESYNC_PG_CONFIG: the server whose libpq edgesync links (build.rs)
test-pg18:
	EDGESYNC_PG_CONFIG=$(PG18_CONFIG) cargo pgrx test pg18 --runas $(PG_USER) --pgdata $(PGTEST_DATA_18)

test-pg15:
	EDGESYNC_PG_CONFIG=$(PG15_CONFIG) cargo pgrx test pg15 --runas $(PG_USER) --pgdata $(PGTEST_DATA_15)

install-pg18: setup
	EDGESYNC_PG_CONFIG=$(PG18_CONFIG) cargo pgrx install --pg-config $(PG18_CONFIG)

install-pg15: setup
	EDGESYNC_PG_CONFIG=$(PG15_CONFIG) cargo pgrx install --pg-config $(PG15_CONFIG) --no-default-features --features pg15

test-integration: install-pg18
	EDGESYNC_PG_CONFIG=$(PG18_CONFIG) EDGESYNC_PG_USER=$(PG_USER) \
		cargo test --features integration --test health --test conflicts --test forwarder --test apply --test upgrade --test roles --test relay --test chaos --test names --test edges --test harness -- --test-threads=1

test-integration-pg15: install-pg15
	EDGESYNC_PG_CONFIG=$(PG15_CONFIG) EDGESYNC_PG_USER=$(PG_USER) \
		cargo test --no-default-features --features "pg15 integration" --test forwarder --test apply --test relay -- --test-threads=1

# Benchmarks: a release build, ratios against baselines measured in the same run.
install-pg18-release: setup
	EDGESYNC_PG_CONFIG=$(PG18_CONFIG) cargo pgrx install --release --pg-config $(PG18_CONFIG)

bench: setup
	@$(MAKE) --no-print-directory install-pg18-release
	@PG_CONFIG=$(PG18_CONFIG) PG_USER=$(PG_USER) bash bench/bench.sh

# The same benchmark once, small and short (1 round, a 10k-row backlog, 2 s
# runs; under a minute), with whatever edgesync is installed in PostgreSQL 18
# (`make test` installed a debug build just before): every row is measured
# and printed, no ratio is asserted.
bench-smoke: setup
	@PG_CONFIG=$(PG18_CONFIG) PG_USER=$(PG_USER) BENCH_SMOKE=1 bash bench/bench.sh

# The cloud's apply alone: apply_batch of captured 10k-row batches, timed
# (PROFILE=lww.update: profiled instead; bench/apply.sh says more).
bench-apply: setup
	@$(MAKE) --no-print-directory install-pg18-release
	@PG_CONFIG=$(PG18_CONFIG) PG_USER=$(PG_USER) bash bench/apply.sh

demo: setup
	@$(MAKE) --no-print-directory install-pg18
	@PG_CONFIG=$(PG18_CONFIG) PG_USER=$(PG_USER) bash scripts/demo.sh start

# Nothing to stop where set-up never ran: no demo can have started.
demo-stop:
ifneq ($(wildcard $(ENV_MK)),)
	@PG_CONFIG=$(PG18_CONFIG) PG_USER=$(PG_USER) bash scripts/demo.sh stop
else
	@echo "no demo here (set-up never ran)"
endif

# Mutation testing of the pure logic in src/model/ (not part of `make test`):
# cargo-mutants changes the code one mutant at a time and reports the mutants
# no unit test catches (mutants/README.md). It runs on a crate staged in
# target/mutants/crate/, no pgrx (a mutant builds in about a second), so the
# work tree is never changed. Fails on a survivor not in mutants/survivors.txt.
# Report: target/mutants/mutants.out/. One file: MUTANTS_ARGS='-f src/model/node.rs'.
MUTANTS_ARGS ?=
mutants: setup
	@bash mutants/run.sh $(MUTANTS_ARGS)

clean:
	cargo clean
