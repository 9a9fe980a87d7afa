"""Regenerate every figure: ``python -m experiments`` (what ``make figures`` runs). See ``experiments.runner``."""

from experiments.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
