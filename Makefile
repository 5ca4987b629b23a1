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

pytest:
	$(VENV)/pytest -q -p no:cacheprovider

clean:
	rm -rf .venv node_modules townhall-data src/townhall/web/static/vendor
