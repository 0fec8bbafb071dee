"""The reading examples of cache_layout.md run, as written, on a real cache with no aver import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

DOC = Path(__file__).parents[1] / "cache_layout.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_examples():
    assert len(_python_blocks()) >= 3


def test_packed_example_runs_with_plain_libraries_and_no_warning(tmp_path):
    """The xarray example of a packed copy: open_datatree without warnings, a clip by id, a fold's
    training split."""
    from aver.cache import FeatureCache
    from aver.pack import pack
    from aver.testing import build_feature_cache

    src = build_feature_cache(str(tmp_path / "toy.zarr"), n_clips=40, d_image=12)
    pack(src, str(tmp_path / "packed.zarr"), progress=False)
    code = "import warnings\nwarnings.simplefilter('error')\n"
    code += f"PACKED = {str(tmp_path / 'packed.zarr')!r}\n" + _python_blocks()[0]
    assert not re.search(r"^\s*(from|import)\s+aver\b", code, flags=re.M)
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "c003" and "train validation test unused" in out.stdout
    # the fold's training ids select the frames (no "dimension coordinate 'fold' conflicts")
    n_train = len(FeatureCache(src).split_indices(1, "train"))
    assert out.stdout.split()[3:5] == [str(n_train), str(n_train)], out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("block", [1, 2])
def test_layout_example_runs_with_plain_libraries(extracted_store, block, tmp_path):
    code = f"STORE = {extracted_store!r}\n" + _python_blocks()[block]
    assert not re.search(r"^\s*(from|import)\s+aver\b", code, flags=re.M), "the doc needs no aver code"
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    if block == 1:
        assert "(20, " in out.stdout  # frames of the first done clip
    if block == 2:  # dask chunks of 64 clips (or all of them), not one per clip; CF attributes
        n = zarr.open_group(extracted_store, mode="r")["clips/id"].shape[0]
        assert out.stdout.startswith(f"({min(n, 64)}, ") and "pending done failed" in out.stdout


@pytest.mark.parametrize("targets", [(), ("valence",)])
def test_working_store_has_the_packed_copys_cf_attributes(tmp_path, targets):
    """Every array of the working store carries the attributes its packed copy has (long_name,
    units, flag_values / flag_meanings of the codes), on arrays whose data, dtype and chunks are
    the layout's: xarray shows them without packing."""
    from aver import layout as L
    from aver.pack import pack
    from aver.testing import add_toy_inputs, build_feature_cache

    src = build_feature_cache(str(tmp_path / "toy.zarr"), n_clips=12, targets=targets)
    add_toy_inputs(src)
    pack(src, str(tmp_path / "packed.zarr"), progress=False)
    work, packed = zarr.open_group(src, mode="r"), zarr.open_group(str(tmp_path / "packed.zarr"), mode="r")
    present = [name for name in L.ARRAYS if L.has_array(work, name)]
    assert L.INPUT_STATUS in present and (L.TARGETS in present) == bool(targets)
    for name in present:
        attrs = dict(work[name].attrs)
        assert attrs == dict(packed[name].attrs) and attrs["long_name"], name
        assert work[name].chunks[0] == (1 if L.ARRAYS[name].per_clip else work[name].shape[0]), name
    assert work[L.STATUS].attrs["flag_meanings"] == "pending done failed"
    assert work[L.FOLD_SPLIT].attrs["flag_values"] == [0, 1, 2, -1]
    assert work[L.FPS].attrs["units"] == "Hz"


def test_doc_and_code_agree_on_arrays_and_codes():
    """Every array of ``aver.layout`` is in the doc's table with its dtype; the codes match."""
    from aver import layout as L

    text = DOC.read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_/]+)` \| (\w+)", text, flags=re.M)}
    for name, spec in L.ARRAYS.items():
        assert name in rows or any(name in r for r in re.findall(r"^\|[^|]*\|", text, flags=re.M)), name
        if name in rows:
            assert rows[name] == spec.dtype, (name, rows[name], spec.dtype)
    assert f"# Cache layout (version {L.LAYOUT_VERSION})" in text
    assert "0 pending, 1 done, 2 failed" in text and L.STATUS_NAMES == {0: "pending", 1: "done", 2: "failed"}
    assert "0 train, 1 validation, 2 test, -1 unused" in text
    assert L.SPLIT_CODES == {"train": 0, "validation": 1, "test": 2, "unused": -1}
