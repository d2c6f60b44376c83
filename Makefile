# Palisade: the two commands of the README, and the pieces they are made of.
#   make demo   build the plugins, start the mock upstream and the gateway, run the scenes
#   make test   build the plugins and run every test (what .ci/run calls)

CARGO ?= cargo
WASM_TARGET := wasm32-wasip2
DIST := dist/plugins
OUT := target/$(WASM_TARGET)/plugin

.PHONY: demo test plugins plugins-rust setup test-rust test-e2e bench lint plugins-py plugins-js dist

# Plugins in other languages (examples/plugins/): pinned tools, installed by `make setup`.
COMPONENTIZE_PY_VERSION := 0.25.1
JS_PLUGIN := examples/plugins/js

MCP2_VENV := tests/e2e/.venv-mcp2

## Install what a fresh machine lacks: the Wasm target, Debian's Chromium (the console's browser
## tests drive it through Playwright; `playwright install` is never run), the Python test clients
## (mcp 1.x beside openai; mcp 2.x in its own venv) and the npm MCP servers the MCP tests put
## behind /mcp.
setup:
	rustup target add $(WASM_TARGET)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	python3 -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
	python3 -m pip install --quiet --disable-pip-version-check componentize-py==$(COMPONENTIZE_PY_VERSION)
	npm ci --prefix $(JS_PLUGIN) --no-audit --no-fund --loglevel=error
	test -x $(MCP2_VENV)/bin/python || python3 -m venv $(MCP2_VENV)
	$(MCP2_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/e2e/requirements-mcp2.txt
	cd tests/e2e/mcp-servers && npm ci --no-audit --no-fund --silent

## The shipped Rust plugins (crate palisade-plugin-NAME, built to dist/plugins/NAME.wasm) and the
## test fixtures (crate palisade-fixture-NAME, built to dist/plugins/NAME.wasm).
RUST_PLUGINS := model-allow depth budget pii router tool-acl approvals
FIXTURES := plugin wrong-world trivial legacy

## Build every plugin: the Rust ones and the Python/JavaScript examples.
plugins: plugins-rust plugins-py plugins-js
	@echo "plugins built into $(DIST)/"

## Build the shipped Rust plugins and the test fixtures as Wasm components into dist/plugins/.
plugins-rust:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	$(CARGO) build --quiet --target $(WASM_TARGET) --profile plugin \
		$(foreach p,$(RUST_PLUGINS),-p palisade-plugin-$(p)) $(foreach f,$(FIXTURES),-p palisade-fixture-$(f))
	@mkdir -p $(DIST)
	@$(foreach p,$(RUST_PLUGINS),cp $(OUT)/palisade_plugin_$(subst -,_,$(p)).wasm $(DIST)/$(p).wasm &&) true
	@$(foreach f,$(FIXTURES),cp $(OUT)/palisade_fixture_$(subst -,_,$(f)).wasm $(DIST)/$(if $(filter plugin,$(f)),fixture,$(f)).wasm &&) true

## The Python example plugin (componentize-py; WASI stubbed out: it imports only the host).
plugins-py: $(DIST)/customer-guard-py.wasm
$(DIST)/customer-guard-py.wasm: examples/plugins/python/customer_guard.py wit/policy.wit
	@command -v componentize-py >/dev/null || python3 -m pip install --quiet --disable-pip-version-check componentize-py==$(COMPONENTIZE_PY_VERSION)
	@mkdir -p $(DIST)
	componentize-py --wit-path wit --world plugin componentize --stub-wasi \
		-p examples/plugins/python customer_guard -o $@

## The JavaScript example plugin (componentize-js; every WASI feature disabled).
plugins-js: $(DIST)/business-hours-js.wasm
$(DIST)/business-hours-js.wasm: $(JS_PLUGIN)/business_hours.js $(JS_PLUGIN)/package-lock.json wit/policy.wit
	@test -x $(JS_PLUGIN)/node_modules/.bin/componentize-js || npm ci --prefix $(JS_PLUGIN) --no-audit --no-fund --loglevel=error
	@mkdir -p $(DIST)
	cd $(JS_PLUGIN) && npm run --silent build

## The demo needs only the Rust plugins (no Python or npm).
## `make demo KEEP=1` keeps the gateway (and its console) up after the scenes, until Ctrl-C
## (only the value 1 does: KEEP=0 or KEEP= runs the scenes and stops).
demo: plugins-rust
	$(CARGO) run --quiet -p palisade -- demo $(if $(filter 1,$(KEEP)),--keep)

## The release tarball (target/dist/palisade-VERSION-ARCH-linux.tar.gz): the stripped binary,
## the shipped plugins with their compiled cache, an example config and a systemd unit.
dist: plugins-rust
	$(CARGO) build --release -p palisade
	bash scripts/dist.sh

test: setup plugins test-rust test-e2e

test-rust:
	$(CARGO) test --workspace

test-e2e:
	$(CARGO) build --quiet -p palisade -p mock-upstream
	python3 -m pytest -q tests/e2e
	$(MCP2_VENV)/bin/python -m pytest -q tests/e2e/test_mcp.py tests/e2e/test_mcp_catalog.py

bench: plugins
	$(CARGO) bench -p palisade --bench chain
	bash benches/e2e.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
