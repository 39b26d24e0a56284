"""Course infrastructure: notebook loading, export, checks, plots, data, weights.

Importing ``helpers`` is cheap; submodules that need torch or matplotlib
(``helpers.checks``, ``helpers.plots``, ...) are imported where used.
"""

from helpers.notebook import NotebookLoadError, load_notebook

__all__ = ["NotebookLoadError", "load_notebook"]
