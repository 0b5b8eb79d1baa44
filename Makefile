# The two commands of the README: `make run` and `make test`. Both create .venv on first use
# from the pinned requirements.lock, so a fresh machine needs only python3 and make.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: install run test bench bank clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/wallet serve

test: $(STAMP)
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .wallet-data .pytest_cache .hypothesis
