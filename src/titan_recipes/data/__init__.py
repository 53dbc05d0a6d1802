"""Data sources: one folder each (``text``, ``random``, ``mds``, ``blendcorpus``, ``mixture``), found
through :mod:`titan_recipes.data.registry`. Importing this package imports nothing heavy; a source's
loader is imported when a run selects it."""
