# Two commands do everything on a fresh clone (Python >= 3.11 with pip and venv):
#   make figures   regenerate every figure into figures/
#   make test      run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build, installed before anything else can ask for torch: an unpinned torch pulls a multi-GB
# CUDA build. With a GPU, install your CUDA torch into $(VENV) first; a 2.13.0+cuXXX build satisfies this.
TORCH  ?= torch==2.13.0
ARGS   ?=
# The second TransformerLens major: 3.9, the last with HookedTransformer (and what SAELens pins). Its own venv,
# with SAELens as the oracle for interp.sae's format and formulas.
VENV3  ?= .venv-tl3
TL3    ?= transformer-lens>=3.9,<4
SAELENS ?= sae-lens==6.54.0
# The tests whose outcome can depend on the major or the backend (README, "Which tests need which major"). The
# card's 768-sample writing test runs once, on the default install: it reads no backend-specific hook.
TL3_TESTS ?= tests/test_loading.py tests/test_hook_writes.py tests/test_trust.py tests/test_hooks.py tests/test_inputs.py \
	tests/test_patching.py tests/test_heads.py tests/test_sampling.py tests/test_architecture.py \
	tests/test_transformer_lens_oracles.py tests/test_bundled.py tests/test_circuits.py tests/test_sae.py

.PHONY: setup setup-tl3 figures test test-tl3 benchmark benchmark-tl3 notebook train-bundled clean
setup: $(VENV)/.installed
setup-tl3: $(VENV3)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,export]"
	touch $@

$(VENV3)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV3)
	$(VENV3)/bin/python -m pip install --quiet --upgrade pip
	$(VENV3)/bin/python -m pip install --quiet "$(TORCH)"
	$(VENV3)/bin/python -m pip install --quiet -e ".[test]" "$(TL3)" "$(SAELENS)"
	touch $@

figures: setup
	$(BIN)/python -m experiments $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

# The same tests on TransformerLens 3.9, where both backends exist (CI runs this after make test).
test-tl3: setup-tl3
	$(VENV3)/bin/python -m pytest $(TL3_TESTS) --deselect tests/test_bundled.py::test_writing_matches_the_card $(ARGS)

benchmark: setup
	$(BIN)/python -m experiments.benchmark $(ARGS)

benchmark-tl3: setup-tl3
	$(VENV3)/bin/python -m experiments.benchmark $(ARGS)

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
	rm -rf $(VENV) $(VENV3) *.egg-info .pytest_cache .hypothesis
