"""``python -m titan_recipes.cli``: the ``titan-recipes`` command without the console script."""

from . import main

raise SystemExit(main())
