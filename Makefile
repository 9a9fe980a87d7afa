# Two commands do everything on a fresh clone (Python >= 3.10 with pip and venv):
#   make figures   regenerate every figure into figures/
#   make test      run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build, installed before anything else can ask for torch: an unpinned torch pulls a multi-GB
# CUDA build. With a GPU, install your CUDA torch into $(VENV) first; a 2.13.0+cuXXX build satisfies this.
TORCH  ?= torch==2.13.0
ARGS   ?=

.PHONY: setup figures test benchmark notebook train-bundled clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,export]"
	touch $@

figures: setup
	$(BIN)/python -m experiments $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

benchmark: setup
	$(BIN)/python -m experiments.benchmark $(ARGS)

# Re-execute the walkthrough in place, with its outputs (offline it uses the bundled model and says so).
notebook: setup
	$(BIN)/python -c "import nbclient, nbformat; p = 'notebooks/gpt2_walkthrough.ipynb'; \
	nb = nbformat.read(p, as_version=4); nbclient.NotebookClient(nb, timeout=600, kernel_name='python3', \
	resources={'metadata': {'path': 'notebooks'}}).execute(); nbformat.write(nb, p)"

# Needs the corpus packages: apt-get install bible-kjv python3.11-doc r-cran-janeaustenr (see bundled_corpus.py).
train-bundled: setup
	$(BIN)/python -m pip install --quiet -e ".[train]"
	$(BIN)/python -m experiments.train_bundled_model $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
