"""Execute stage notebooks in place, as they are committed: every cell but the `#| slow` and `#| cuda` ones.

    .venv/bin/python nbs/_execute.py nbs/03_attack.ipynb [more.ipynb ...]     # or: make notebooks NBS="03_attack 04_evaluation"

The skipped cells keep the outputs they were committed with (they were produced by a full run: `--all` reruns them
too, which can take hours on a CPU; `--cells ID ...` reruns only the flagged cells with those ids, e.g. a study cell
whose runs are already stored). One torch thread, HF_HUB_OFFLINE=1, each notebook in its own
kernel started in nbs/ with the inline figure backend. Run `nbdev_clean` afterwards (the Makefile target does).
"""
import argparse, os, sys, time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

FLAGS = ("slow", "cuda")


def flagged(cell, flags=FLAGS) -> bool:
    "True when a code cell carries one of the `#| slow` / `#| cuda` directives in its leading comment lines."
    for line in cell.source.splitlines():
        s = line.strip()
        if not s: continue
        if not s.startswith("#|"): return False
        if any(w in flags for w in s[2:].replace(",", " ").split()): return True
    return False


def execute(path: Path, run_all: bool = False, timeout: int = 1800, cells=()) -> float:
    "Execute one notebook in place (flagged cells only with `run_all` or when their id is in `cells`); returns seconds."
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or (not run_all and flagged(cell) and cell.get("id") not in cells): continue
            client.execute_cell(cell, i)
    nbformat.write(nb, path)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="+", help="notebook paths (or stems under nbs/)")
    p.add_argument("--all", action="store_true", help="also run the #| slow and #| cuda cells")
    p.add_argument("--cells", nargs="+", default=(), metavar="ID", help="also run the flagged cells with these ids")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # figures must land in the notebook as outputs: the inline backend, whatever MPLBACKEND the caller has (Agg drops them)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    here = Path(__file__).parent
    for n in a.notebooks:
        path = Path(n) if n.endswith(".ipynb") else here / f"{n}.ipynb"
        if not path.exists():
            print(f"no notebook {path}", file=sys.stderr); return 2
        print(f"{path.name}: {execute(path, a.all, cells=set(a.cells)):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
