"""The watchdog's standalone copy: the shared module inlined in place of its import, and nothing else changed."""

from __future__ import annotations

import pytest

from nexusml.command import chart_files

WATCHDOG = '''"""doc"""

from __future__ import annotations

import sys
from pathlib import Path

from nexusml.core.probe import served_models

log = None
'''
SHARED = '''"""shared doc"""

from __future__ import annotations

from pathlib import Path

SUFFIX = "x"


def served_models(root: Path) -> list[str]:
    return []
'''


def test_the_import_line_becomes_the_shared_definitions() -> None:
    text = chart_files.standalone(WATCHDOG, SHARED)
    assert chart_files.SHARED_IMPORT not in text and "shared doc" not in text
    assert text.count("from pathlib import Path") == 1
    before, after = text.split("# --- inlined from nexusml/core/probe.py")
    assert before == WATCHDOG.split("from nexusml.core.probe")[0]
    assert 'SUFFIX = "x"' in after and after.index("def served_models") < after.index("log = None")
    compile(text, "standalone", "exec")


def test_a_shared_import_the_watchdog_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\['json'\]"):
        chart_files.standalone(WATCHDOG, SHARED.replace("from pathlib", "import json\nfrom pathlib"))


def test_the_committed_copy_is_current() -> None:
    assert chart_files.main(["--check"]) == 0
