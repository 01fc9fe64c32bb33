"""Pareto dashboards: pure data (``info``), plotly figures (``figures``), the static
report (``report``), the live web app (``app``) and the export of a chosen trial.

Runs without torch. Plotly is imported only by ``figures``/``report``/``app``.
"""

from morsearch.dashboard.export import export_to_folder, export_trial

__all__ = ["export_to_folder", "export_trial"]
