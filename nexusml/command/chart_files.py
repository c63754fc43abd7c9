"""The watchdog as one file for Triton's own container, where nothing of ours is installed.

`nexusml/triton/watchdog.py` imports `nexusml.core.probe` (the rules it shares with the watcher and the proxy);
the standalone copy has that module's body inlined in place of the import line. The chart ships it as
`files/triton_watchdog.py` (a chart cannot read outside its folder) and compose mounts the same file.
Generated, never edited by hand:

    python -m nexusml.command.chart_files            # rewrite the copy (`make chart-files`)
    python -m nexusml.command.chart_files --check    # exit 1 if the copy is stale
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WATCHDOG = ROOT / "nexusml" / "triton" / "watchdog.py"
SHARED = ROOT / "nexusml" / "core" / "probe.py"
STANDALONE = ROOT / "helm" / "nexus-dataplane" / "files" / "triton_watchdog.py"
SHARED_IMPORT = "from nexusml.core.probe import "


def _imported_names(tree: ast.Module) -> set[str]:
    return {
        (alias.asname or alias.name).split(".")[0]
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }


def _body(source: str) -> str:
    """`source` without its docstring and imports: the definitions the watchdog needs."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    skipped = {
        line
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str))
        for line in range(node.lineno - 1, node.end_lineno or node.lineno)
    }
    return "".join(line for number, line in enumerate(lines) if number not in skipped).strip("\n") + "\n"


def standalone(watchdog: str, shared: str) -> str:
    """`watchdog` with its one import of the shared module replaced by that module's definitions.

    The shared module's own imports must already be the watchdog's (the inlined code lands after its imports).
    """
    (line,) = [line for line in watchdog.splitlines(keepends=True) if line.startswith(SHARED_IMPORT)]
    missing = _imported_names(ast.parse(shared)) - _imported_names(ast.parse(watchdog)) - {"__future__"}
    if missing:
        raise ValueError(f"the watchdog must import what {SHARED.name} imports: {sorted(missing)}")
    inlined = f"# --- inlined from nexusml/core/probe.py by `make chart-files` ---\n\n{_body(shared)}\n"
    return watchdog.replace(line, inlined, 1)


def render() -> str:
    return standalone(WATCHDOG.read_text(encoding="utf-8"), SHARED.read_text(encoding="utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nexusml.command.chart_files", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the standalone copy is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if STANDALONE.read_text(encoding="utf-8") != text:
            print(f"{STANDALONE.relative_to(ROOT)} is stale: run `make chart-files`", file=sys.stderr)
            return 1
        return 0
    STANDALONE.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
