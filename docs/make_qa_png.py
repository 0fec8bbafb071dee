"""Regenerate ``docs/qa.png``: the page of ``aver qa`` as a browser shows it (``make docs``).

In a temporary folder: the synthetic corpus (4 actors x 3 emotions, 1 s clips) plus two broken
files under clip names (a truncated video and an empty one, so the page shows failures grouped by
cause), extracted with the ``tiny`` preset and end-to-end inputs (face crops, waveforms: the
thumbnails and flow measures), then ``aver qa``, then a screenshot by a headless Chromium
(``--window-size=1280,2000``). The store is named by a relative path, so the page shows
``caches/synthetic.zarr``, not the temporary folder. Needs the ``[extract]`` install and a
Chromium on PATH (``make test-browser`` installs one). Nothing is downloaded.

    .venv/bin/python docs/make_qa_png.py [--out docs/qa.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = (
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
    "headless_shell",
)
CORPUS = {"n_actors": 4, "emotions": ["neutral", "happy", "sad"], "clips_per_emotion": 1, "seconds": 1.0}
SETTINGS = ["inputs.crops=true", "inputs.wave=true", "inputs.crop_frames=8", "runtime.group_frames=50"]


def chromium() -> str:
    """The first Chromium binary on PATH, or exit with what to install."""
    found = next((shutil.which(b) for b in CHROMIUM if shutil.which(b)), None)
    if found is None:
        sys.exit(
            f"make_qa_png: no Chromium on PATH (looked for {', '.join(CHROMIUM)}); `make test-browser` installs it"
        )
    return found


def corpus(data: Path):
    """The synthetic corpus under ``data`` with two broken clips added; its index."""
    from aver.extract.datasets import DatasetOptions, load_dataset

    load_dataset("synthetic", DatasetOptions(data=data, options=CORPUS))  # generated on first use
    good = sorted(data.rglob("*.mp4"))[0].read_bytes()
    broken = data / "Actor_05"
    broken.mkdir(exist_ok=True)
    (broken / "01-01-03-01-01-01-05.mp4").write_bytes(good[: len(good) * 2 // 5])  # truncated
    (broken / "01-01-01-01-01-01-05.mp4").write_bytes(b"")  # empty
    return load_dataset("synthetic", DatasetOptions(data=data, options=CORPUS))


def extract(index, cache: str) -> None:
    """The ``tiny`` preset with face crops and waveforms (two clips fail, by design)."""
    from aver.extract.pipeline import run_extraction
    from aver.extract.presets import preset_config
    from aver.overrides import apply_overrides

    cfg = apply_overrides(preset_config("tiny", "synthetic"), SETTINGS)
    summary = run_extraction(cfg, index, cache, progress=False)
    if summary.failed != 2:
        sys.exit(f"make_qa_png: expected the 2 broken clips to fail, got:\n{summary.report()}")


def screenshot(browser: str, page: Path, out: Path, size: str) -> None:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += [f"--screenshot={out}", f"--window-size={size}", page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if not out.is_file() or out.stat().st_size == 0:
        sys.exit(f"make_qa_png: Chromium wrote no screenshot:\n{done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("qa.png")), help="PNG to write")
    parser.add_argument(
        "--window-size", default="1280,2000", help="Chromium's window, W,H (default 1280,2000)"
    )
    args = parser.parse_args(argv)
    browser, out, here = chromium(), Path(args.out).resolve(), Path.cwd()
    with tempfile.TemporaryDirectory(prefix="aver-qa-png-") as tmp:
        os.environ.update(AVER_HOME=str(Path(tmp) / "home"), HF_HUB_OFFLINE="1")
        os.chdir(tmp)  # relative paths: the page names caches/synthetic.zarr
        try:
            extract(corpus(Path("data").resolve()), "caches/synthetic.zarr")
            from aver.cli import main as aver

            if aver(["qa", "caches/synthetic.zarr", "--out", "qa/synthetic.html", "-q"]) != 0:
                sys.exit("make_qa_png: aver qa failed")
            out.parent.mkdir(parents=True, exist_ok=True)
            screenshot(browser, Path("qa/synthetic.html"), out, args.window_size)
        finally:
            os.chdir(here)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
