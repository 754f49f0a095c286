# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup demo test test-unit lint bench lock down

setup:            ## install everything (idempotent; caches under ~/.cache/fhe-coprocessor)
	scripts/install

demo: setup       ## the main job end to end: stack, tenant, one FheBatch through the operator
	scripts/demo

test: setup       ## lint, then the whole suite: unit, engine, integration (real services), e2e
	$(VENV)/ruff check .
	rm -f .artifacts/pytest.xml
	$(VENV)/pytest --junitxml=.artifacts/pytest.xml $(PYTEST_ARGS)
	$(VENV)/python scripts/check-test-results .artifacts/pytest.xml

test-unit:
	$(VENV)/pytest -m unit $(PYTEST_ARGS)

lint:
	$(VENV)/ruff check .

bench: setup      ## benchmarks: print figures, write JSON under bench/results/
	$(VENV)/python bench/db.py
	$(VENV)/python bench/kube.py
	$(VENV)/python bench/ops.py --repeat 1 --types Uint8,Uint16,Uint32  # concrete Mul on Uint64 compiles for >10 min
	$(VENV)/python bench/graph.py
	$(VENV)/python bench/sns.py
	$(VENV)/python bench/verify.py
	$(VENV)/python bench/listener.py
	$(VENV)/python bench/sender.py
	$(VENV)/python bench/orchestration.py

lock:             ## re-pin constraints.txt from the current .venv
	$(VENV)/pip freeze --all --exclude-editable | grep -vE '^(fhe-coprocessor|fhe-native|pip)( @|==)' > constraints.txt

down:
	$(VENV)/fhectl dev down
