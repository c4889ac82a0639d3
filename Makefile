# Corral's two commands: `make run` (build and start a local Corral) and `make test`
# (everything CI checks). Both install what they need on a fresh Debian machine.

CARGO ?= cargo
DATA_DIR ?= .corral
export CARGO_TERM_COLOR ?= always

.PHONY: run test deps build lint test-rust bench clean

## run: build, fetch the demo model, create the first admin, start `corral serve`
run: deps build
	scripts/run.sh

## test: fmt check, clippy -D warnings, and every test suite
test: deps lint test-rust

deps:
	scripts/install-deps.sh

build:
	$(CARGO) build --release --bin corral

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# Store-touching tests run on SQLite and on a throwaway PostgreSQL 15 server.
test-rust:
	scripts/with-postgres.sh $(CARGO) test --workspace --locked

bench: deps
	bench/api.sh

clean:
	$(CARGO) clean
