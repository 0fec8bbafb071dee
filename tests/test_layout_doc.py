"""The reading examples of cache_layout.md run, as written, on a real cache with no aver import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).parents[1] / "cache_layout.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_examples():
    assert len(_python_blocks()) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("block", range(2))
def test_layout_example_runs_with_plain_libraries(extracted_store, block, tmp_path):
    code = f"STORE = {extracted_store!r}\n" + _python_blocks()[block]
    assert not re.search(r"^\s*(from|import)\s+(extract|train)\b", code, flags=re.M), (
        "the doc needs no aver code"
    )
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    if block == 0:
        assert "(20, " in out.stdout  # frames of the first done clip
