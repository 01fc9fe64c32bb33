"""The search: YAML spaces to Optuna studies, the objective, early stopping, workers, launching.

No eager imports here: ``import morsearch.search.results`` (the dashboard's read-only view)
must not load Lightning, torch or the worker machinery.
"""
