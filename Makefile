# townhall: the two commands a newcomer needs are `make run` and `make test`.
.PHONY: run demo test lint typecheck pytest setup setup-test bench-join clean

PORT ?= 8000
VENV := .venv/bin

run: setup            ## serve on http://127.0.0.1:$(PORT)/ with SQLite and files under ./townhall-data
	$(VENV)/townhall serve --port $(PORT)

demo: setup           ## serve with a live demo space that bot speakers keep talking in
	$(VENV)/townhall demo --port $(PORT)

test: setup-test lint typecheck pytest   ## install what the tests need, then lint, type-check and test

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh --test

lint:
	$(VENV)/ruff format --check
	$(VENV)/ruff check

typecheck:
	$(VENV)/mypy

# Two phases: the tests that can share the machine, TEST_WORKERS at a time
# (pytest-xdist; a file's tests stay on one worker, so a module's server starts
# once), then the ones that hold real time to a bound, alone (tests/conftest.py
# SERIAL). The second runs even when the first failed; `make` fails if either did.
TEST_WORKERS ?= 2
pytest:
	@$(VENV)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS); \
	shared=$$?; \
	$(VENV)/pytest -q -p no:cacheprovider -m serial $(PYTEST_ARGS); \
	alone=$$?; \
	[ $$shared -eq 0 ] && [ $$alone -eq 0 ]

clean:
	rm -rf .venv node_modules townhall-data src/townhall/web/static/vendor
