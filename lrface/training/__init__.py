"""Training, evaluation and export of the lrface models (needs the `lrface[train]` extra)."""
