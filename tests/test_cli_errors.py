"""User mistakes that ended in a traceback: each is one line naming the flag or file and the cause,
with a non-zero exit status (``aver.errors.EXIT_CODES``), and nothing written.

The command line runs in this process (``aver.cli.main``), so logging goes to pytest's capture and
stderr holds only what ``main`` prints; the closed-pipe case runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aver.cli import main
from aver.testing import build_feature_cache


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    return build_feature_cache(str(tmp_path_factory.mktemp("errors") / "toy.zarr"), n_clips=12)


def one_line(capsys, code: int, got: int, *needles: str) -> str:
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if "it/s]" not in line]  # tiny models made once
    assert got == code, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("aver: error:"), err[-2000:]
    assert "Traceback" not in err + out
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create anything in: a chmod 0o500 folder, or (root ignores
    permissions) a path under /proc, where nobody can make a folder."""
    if os.geteuid() == 0:
        return Path("/proc/aver-test-unwritable")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "sub"


needs_no_gpu = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has a GPU: --device cuda works"
)


@needs_no_gpu
def test_train_on_cuda_without_a_gpu(toy, tmp_path, capsys):
    code = main(
        ["train", "--cache", toy, "--preset", "tiny", "--device", "cuda", "--out", str(tmp_path / "r")]
    )
    one_line(capsys, 2, code, "--device cuda", "no CUDA GPU", "--device cpu")
    assert not (tmp_path / "r").exists()


@needs_no_gpu
def test_extract_on_cuda_without_a_gpu(tmp_path, capsys):
    code = main(
        [
            "extract",
            "--dataset",
            "synthetic",
            "--preset",
            "tiny",
            "--data",
            str(tmp_path / "d"),
            "--device",
            "cuda",
        ]
        + ["--cache", str(tmp_path / "c"), "-q"]
    )
    one_line(capsys, 2, code, "--device", "cuda", "no CUDA GPU")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()  # refused before any work


@pytest.mark.parametrize("command", ["train", "pack", "store", "cache"])
def test_an_output_that_is_a_file(toy, tmp_path, capsys, command):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    argv, flag = {
        "train": (["train", "--cache", toy, "--preset", "tiny", "--out", str(afile)], "--out"),
        "pack": (["cache", "pack", toy, str(afile), "-q"], "DEST"),
        "store": (
            ["extract", "--dataset", "synthetic", "--preset", "tiny", "--store", str(afile)],
            "--store",
        ),
        "cache": (
            ["extract", "--dataset", "synthetic", "--preset", "tiny", "--cache", str(afile)],
            "--cache",
        ),
    }[command]
    if command in ("store", "cache"):
        argv += ["--data", str(tmp_path / "d"), "-q"]
    line = one_line(capsys, 2, main(argv), flag, str(afile), "is a file")
    assert afile.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"], line


def test_convert_weights_on_a_text_file(tmp_path, capsys):
    text = tmp_path / "weights.pt"
    text.write_text("hello, not weights\n")
    for extra in ([], ["--allow-pickle"]):
        code = main(["convert-weights", str(text), str(tmp_path / "w.safetensors"), *extra])
        one_line(capsys, 2, code, str(text), "not a weight file")
    assert not (tmp_path / "w.safetensors").exists()


def test_s3_url_without_credentials(tmp_path, capsys, monkeypatch):
    pytest.importorskip("s3fs")
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    url = "s3://aver-no-such-bucket/c.zarr"
    code = main(["info", url, "--storage-option", "endpoint_url=http://127.0.0.1:9"])
    one_line(capsys, 2, code, url, "no cloud credentials", "AWS_ACCESS_KEY_ID")


def test_unwritable_out_for_train_and_qa(toy, tmp_path, capsys):
    where = unwritable(tmp_path)
    code = main(["train", "--cache", toy, "--preset", "tiny", "--epochs", "1", "--out", str(where / "run")])
    one_line(capsys, 2, code, "--out", str(where / "run"), "cannot write")
    code = main(["qa", toy, "--out", str(where / "qa.html"), "-q"])
    one_line(capsys, 2, code, "--out", str(where / "qa.html"), "cannot write")


def test_info_into_a_closed_pipe_is_quiet(toy):
    read, write = os.pipe()
    os.close(read)  # `aver info X | head`: the reader is gone before aver writes
    code = f"import sys\nfrom aver.cli import main\nsys.exit(main(['info', {toy!r}]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], stdout=write, stderr=subprocess.PIPE, text=True, env=env
    )
    os.close(write)
    assert out.returncode == 0 and out.stderr == "", out.stderr[-2000:]


def test_a_truncated_zip_pack(toy, tmp_path, capsys):
    packed = tmp_path / "toy.zip"
    assert main(["cache", "pack", toy, str(packed), "-q"]) == 0
    capsys.readouterr()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(packed.read_bytes()[: packed.stat().st_size // 3])
    one_line(capsys, 4, main(["info", str(cut)]), str(cut), "not a readable zip file", "truncated")
    code = main(["train", "--cache", str(cut), "--preset", "tiny", "--out", str(tmp_path / "r")])
    one_line(capsys, 4, code, str(cut), "not a readable zip file")
    assert not (tmp_path / "r").exists()


def test_an_os_error_elsewhere_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    """The last resort in ``main``: an OSError with a file name (here a read-only report folder
    found only when writing) is one line naming the path, exit 2; ``-v`` shows the traceback."""
    import aver.train.paper as paper

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "report.md"))

    monkeypatch.setattr(paper, "write_report", refuse)
    one_line(capsys, 2, main(["report", str(tmp_path)]), str(tmp_path / "report.md"), "Permission denied")
    assert main(["-v", "report", str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_log_lines_show_control_characters_escaped():
    import logging

    from aver.utils import InertFormatter

    record = logging.LogRecord(
        "aver", logging.WARNING, __file__, 1, "%s: cut", ("\x1b]8;;x\x07a\nb\u202e",), None
    )
    line = InertFormatter("%(levelname)s %(message)s").format(record)
    assert line == "WARNING \\x1b]8;;x\\x07a\\nb\\u202e: cut"
