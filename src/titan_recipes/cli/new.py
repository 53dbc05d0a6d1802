"""``titan-recipes new SRC_RECIPE DST_DIR [--name NAME]``: start an experiment from a recipe.

Copies the recipe directory and makes the copy its own recipe:

- ``expected_loss.json`` gets an empty entry set under the new name (a copy has not been run yet; its
  first fixture comes from ``titan-recipes fixtures regen DST_DIR``, never from the source's losses);
- ``README.md`` becomes a stub that names the source and lists the commands to run and record;
- in the TOML files, ``runs/<src>`` (``job.dump_folder``) and ``titan-recipes <src>`` (descriptions,
  comments) become the new name, and ``recipes/<src>/`` paths in comments and scripts point at the copy
  when it is inside the repository;
- a copy outside ``<repo>/recipes/`` gets the repository's location in its ``run_train.sh`` (which
  otherwise finds it two levels up), so it still trains unchanged: assets, data and runs stay relative
  to the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from ..fixtures import FIXTURE_FILE, REPO_ROOT
from . import reports


REPO_LINE = 'REPO="$(cd "${HERE}/../.." && pwd)"'
"""How every recipe's run_train.sh finds the repository (two levels above the recipe directory)."""


class NewRecipeError(RuntimeError):
    """The source is not a recipe, or the destination is taken."""


def _readme_stub(name: str, src: Path, dst_display: str) -> str:
    return f"""# {name} recipe

Copied from `{src.name}` by `titan-recipes new` on {time.strftime('%Y-%m-%d')}: describe here what this
experiment changes and why (the source recipe's README is `recipes/{src.name}/README.md`).

```bash
{dst_display}/run_train.sh                         # train (CPU: 1 process; GPU node: all GPUs)
NGPU=2 {dst_display}/run_train.sh --training.steps 100
titan-recipes fixtures regen {dst_display} --nproc 1   # record this recipe's expected loss from real runs
titan-recipes runs list                                # what the launches measured
```

`expected_loss.json` starts empty: record the fixture once the recipe does what you want.
"""


def copy_recipe(src: Path, dst: Path, name: str | None = None) -> Path:
    """Copy recipe ``src`` into ``dst`` (which must not exist) as recipe ``name``. Returns ``dst``."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not (src / "run_train.sh").is_file():
        raise NewRecipeError(f"{src} is not a recipe directory: it has no run_train.sh (see recipes/).")
    if dst.exists():
        raise NewRecipeError(f"{dst} already exists; choose a new directory (titan-recipes new never overwrites).")
    name = name or dst.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise NewRecipeError(f"recipe name '{name}' must be letters, digits, '_', '.' or '-' (it names run directories).")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    inside = dst.parent == REPO_ROOT / "recipes"
    dst_display = os.path.relpath(dst, REPO_ROOT) if dst.is_relative_to(REPO_ROOT) else str(dst)
    for path in [*dst.glob("*.toml"), *dst.glob("*.sh")]:
        text = path.read_text()
        text = text.replace(f"runs/{src.name}", f"runs/{name}").replace(f"titan-recipes {src.name}", f"titan-recipes {name}")
        if inside:
            text = text.replace(f"recipes/{src.name}/", f"recipes/{dst.name}/")
        if path.name == "run_train.sh" and not inside:
            if REPO_LINE not in text:
                raise NewRecipeError(f"{path}: cannot find the line that locates the repository ({REPO_LINE}).")
            text = text.replace(REPO_LINE, f'REPO="${{TITAN_RECIPES_REPO:-{REPO_ROOT}}}"  # set by titan-recipes new')
        path.write_text(text)

    (dst / FIXTURE_FILE).write_text(json.dumps({"recipe": name, "entries": {}}, indent=2) + "\n")
    (dst / "README.md").write_text(_readme_stub(name, src, dst_display))
    return dst


@reports(NewRecipeError)
def cmd_new(args) -> int:
    dst = copy_recipe(args.src, args.dst, args.name)
    print(f"new recipe {args.name or dst.name} in {dst} (from {args.src}); fixtures cleared. Train it: {dst}/run_train.sh")
    return 0


def register(sub) -> None:
    """Add ``new`` to the ``titan-recipes`` subcommands ``sub``."""
    p = sub.add_parser("new", help="copy a recipe into a new directory with a fresh name and no fixtures")
    p.add_argument("src", type=Path, help="recipe directory to copy, e.g. recipes/debug")
    p.add_argument("dst", type=Path, help="new directory (recipes/<name> keeps the copy inside the repository)")
    p.add_argument("--name", help="recipe name (default: the last part of DST)")
    p.set_defaults(func=cmd_new)
