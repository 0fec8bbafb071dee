"""A newcomer's first hour (issue 20): the command line's sharp edges, one regression test each.

1. predict / extract / demo in a trainer-only install: one line naming the ``pip install``, exit 3
   (qa writes its page without OpenCV / PyAV, then exits 3 with one line naming the install);
2. ``-v`` and ``-q`` before or after the command;
3. ``--set KEY=VALUE`` of the wrong type: one line naming key, value and type, before any work;
4. ``aver variants | head -1``: no BrokenPipeError;
5. log lines printed above a live progress bar, not into it;
6. ``-q``: no progress bars (third-party ones included), no INFO lines, warnings still shown;
   matplotlib's INFO/DEBUG never shown;
7. the bars of ``aver cache pack`` / ``verify`` are labelled;
8. ``aver train/cv/sweep --help`` name the run folders ``default_out`` makes, the ``--inputs`` flag
   and no one system's optimiser;
9. the missing-wav2vec2 message names ``hf download``, which the installed huggingface_hub has.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aver.cli import main, make_parser
from aver.testing import build_feature_cache

# The [extract] modules (dask stays: the trainer-only install has it).
EXTRACT = ("av", "cv2", "timm", "transformers", "facenet_pytorch", "skimage")
HIDE = "import sys\n" + "\n".join(f"sys.modules[{m!r}] = None" for m in EXTRACT)


def aver(*args: str, pre: str = "", **kw) -> subprocess.CompletedProcess:
    """The command line in a fresh interpreter (``pre`` runs first, e.g. to hide modules)."""
    code = f"{pre}\nimport sys\nfrom aver.cli import main\nsys.exit(main({list(args)!r}))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, timeout=300, env=env, **kw
    )


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    return build_feature_cache(str(tmp_path_factory.mktemp("polish") / "toy.zarr"), n_clips=20)


def one_line(capsys, code: int, got: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code, err
    assert len(err) == 1 and err[0].startswith("aver: error:"), err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


# -- 1. a trainer-only install -------------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [
        "predict {tmp}/run {tmp}/clip.mp4",
        "extract --dataset synthetic --data {tmp}/data --cache {tmp}/c --preset tiny",
        "demo --data {tmp}/data --cache {tmp}/c --runs {tmp}/runs",
    ],
    ids=lambda c: c.split()[0],
)
def test_extract_commands_in_a_trainer_only_install(command, tmp_path):
    out = aver(*command.format(tmp=tmp_path).split(), pre=HIDE)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 3, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"aver: error: aver {command.split()[0]} needs"), (
        out.stderr
    )
    assert "pip install 'aver[extract]'" in lines[0]
    assert not [p for p in tmp_path.iterdir()], "nothing is made before the refusal"


def test_qa_in_a_trainer_only_install_writes_its_page_and_names_the_install(toy, tmp_path):
    """The page is still written (it says what it lacks); exit 3 and one line name the install."""
    page = tmp_path / "qa.html"
    out = aver("qa", toy, "--data", str(tmp_path), "--out", str(page), "-q", pre=HIDE)
    assert out.returncode == 3, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aver: error:"), out.stderr
    assert "OpenCV (cv2" in lines[0] and "PyAV (av" in lines[0] and "pip install 'aver[extract]'" in lines[0]
    assert page.is_file() and "not installed" in page.read_text()


# -- 2. -v and -q on either side of the command --------------------------------------------------
@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_command_shows_the_traceback(where, tmp_path, capsys):
    missing = str(tmp_path / "none.zarr")
    argv = ["-v", "info", missing] if where == "before" else ["info", missing, "-v"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 4 and "Traceback" in err and err.strip().splitlines()[-1].startswith("aver: error:")
    assert main(["info", missing]) == 4 and "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["-q", "cache", "verify", "{toy}"],
        ["cache", "-q", "verify", "{toy}"],
        ["cache", "verify", "{toy}", "-q"],
        ["-q", "qa", "{toy}", "--out", "{tmp}/qa.html"],
        ["qa", "{toy}", "--out", "{tmp}/qa.html", "-q"],
    ],
)
def test_quiet_before_or_after_the_command_hides_the_bar(argv, toy, tmp_path, capsys):
    assert main([a.format(toy=toy, tmp=tmp_path) for a in argv]) == 0
    assert "clip/s" not in capsys.readouterr().err


def _parsers(parser, path=()):
    """Every parser of the command tree with the words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


def test_every_command_takes_the_shared_flags_on_either_side():
    parser = make_parser()
    commands = list(_parsers(parser))
    assert len(commands) > 15
    for path, sub in commands[1:]:
        flags = {s: a.default for a in sub._actions for s in a.option_strings}
        for flag in ("-v", "--verbose", "-q", "--quiet"):
            assert flags.get(flag, "absent") == argparse.SUPPRESS, (path, flag)
    for flags in (["-v"], ["-q"], ["--verbose", "--quiet"]):
        before = parser.parse_args([*flags, "variants"])
        after = parser.parse_args(["variants", *flags])
        plain = parser.parse_args(["variants"])
        for name in ("verbose", "quiet"):
            given = any(f.lstrip("-")[0] == name[0] for f in flags)
            assert getattr(before, name) is getattr(after, name) is given
            assert getattr(plain, name) is False


# -- 3. --set with a value of the wrong type -----------------------------------------------------
@pytest.mark.parametrize(
    ("item", "needles"),
    [
        ("lr=abc", ("--set lr=abc", "lr must be a number", "'abc'")),
        ("epochs=1.5", ("--set epochs=1.5", "epochs must be an integer", "1.5")),
        ("amp=yes", ("--set amp=yes", "amp must be true or false", "'yes'")),
        ("data.batch_size=x", ("--set data.batch_size=x", "data.batch_size must be an integer", "'x'")),
    ],
)
def test_set_of_the_wrong_type_is_one_line_before_any_work(item, needles, toy, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--cache", toy, "--preset", "tiny", "--set", item, "--out", str(run)])
    one_line(capsys, 2, code, *needles)
    assert not run.exists()


def test_set_types_in_the_extraction_config():
    from aver.errors import ConfigError
    from aver.extract.presets import preset_config
    from aver.overrides import apply_overrides

    cfg = preset_config("tiny", "synthetic")
    with pytest.raises(
        ConfigError, match=r"--set face.min_face_size=big: face.min_face_size must be an integer"
    ):
        apply_overrides(cfg, ["face.min_face_size=big"])
    with pytest.raises(ConfigError, match="flow.weights must be text or null, not 3.5"):
        apply_overrides(cfg, {"flow.weights": 3.5})
    # a text field keeps what was written when it looks like JSON; a path is text
    assert apply_overrides(cfg, ["audio.model=123"]).audio.model == "123"
    assert apply_overrides(cfg, {"audio.model": Path("/w/m")}).audio.model == "/w/m"
    assert apply_overrides(cfg, ["flow.weights=null"]).flow.weights is None
    assert apply_overrides(cfg, ["face.margin=1"]).face.margin == 1  # an integer is a number
    assert apply_overrides(cfg, ["audio.layers=12"]).audio.layers == (12,)  # containers: the owner's


def test_no_preset_value_is_refused_by_the_type_check():
    """Every field of every preset, given back as an override, passes (the check refuses no value
    aver itself uses)."""
    import dataclasses

    from aver.extract.datasets import DATASETS
    from aver.extract.presets import PRESETS, preset_config
    from aver.overrides import apply_overrides
    from aver.train.config import make_config
    from aver.train.systems import SYSTEMS

    def flat(d: dict, prefix: str = ""):
        for k, v in d.items():
            if isinstance(v, dict) and k not in ("model", "storage_options"):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    configs = [
        make_config(p, cache="x.zarr", system=s) for s in SYSTEMS.names() for p in SYSTEMS.get(s).presets
    ]
    configs += [preset_config(p, d) for p in PRESETS for d in DATASETS.names()]
    for cfg in configs:
        assert apply_overrides(cfg, dict(flat(dataclasses.asdict(cfg)))) == cfg


# -- 4. a closed pipe ----------------------------------------------------------------------------
def test_variants_into_a_closed_pipe_is_quiet():
    """``aver variants | head -1``: exit 0 (the reader stopped by choice), nothing on stderr."""
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "aver", "variants"], stdout=write, stderr=subprocess.PIPE, text=True, env=env
    )
    os.close(write)
    assert out.returncode == 0 and out.stderr == "", out.stderr[-2000:]


# -- 5 and 6. log lines and bars -----------------------------------------------------------------
def test_log_lines_go_above_the_bar_and_quiet_hides_both(toy, tmp_path):
    """Training logs an INFO line per epoch while its epoch bar is live: each log line is printed
    on a line of its own (the bar cleared first, redrawn after), never appended to the bar."""
    args = ("train", "--cache", toy, "--preset", "tiny", "--epochs", "2")
    out = aver(*args, "--out", str(tmp_path / "a"))
    assert out.returncode == 0, out.stderr[-2000:]
    pieces = re.split(r"[\r\n]", out.stderr)
    logs = [p for p in pieces if " INFO aver.train: epoch " in p]
    assert len(logs) == 2, out.stderr
    assert all(re.match(r"\d{4}-\d\d-\d\d ", p) for p in logs), logs  # no bar text before them
    assert any("epoch/s" in p for p in pieces)  # the bar was there
    quiet = aver("-q", *args, "--out", str(tmp_path / "b"))
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr[-2000:]


# Stands in for a command (as ``aver variants``): a line of each level, aver's and matplotlib's, and
# a library's bar (made without ``disable=``, as third-party bars are). Source text, so a fresh
# interpreter can define it before ``main`` without importing tqdm first.
LOGGING_COMMAND = """
def logging_command(args):
    import logging
    from tqdm import tqdm

    for name in ("aver.test", "matplotlib.font_manager"):
        for level in (logging.DEBUG, logging.INFO, logging.WARNING):
            logging.getLogger(name).log(level, "%s %s line", name, logging.getLevelName(level))
    for _ in tqdm(range(3), desc="library-bar"):
        pass
    return 0
"""


@pytest.mark.parametrize("flags", [[], ["-q"], ["-v"], ["-q", "-v"]])
def test_quiet_and_verbose_log_levels(flags, caplog, monkeypatch):
    scope: dict = {}
    exec(LOGGING_COMMAND, scope)
    monkeypatch.setattr("aver.cli.train.cmd_variants", scope["logging_command"])
    root, mpl = logging.getLogger().level, logging.getLogger("matplotlib").level
    assert main(["variants", *flags]) == 0
    seen = [r.getMessage().split()[:2] for r in caplog.records]
    want = (
        ["DEBUG", "INFO", "WARNING"]
        if "-v" in flags
        else ["WARNING"]
        if "-q" in flags
        else ["INFO", "WARNING"]
    )
    assert [level for name, level in seen if name == "aver.test"] == want
    assert [level for name, level in seen if name.startswith("matplotlib")] == ["WARNING"]
    assert (logging.getLogger().level, logging.getLogger("matplotlib").level) == (root, mpl)  # restored


def test_quiet_turns_library_bars_off_and_the_handler_prints_log_lines():
    """In a fresh process (tqdm imported after ``main`` began, as under the ``aver`` script): -q
    leaves stderr with the WARNING lines only; without it the library's bar shows."""
    pre = f"import aver.cli.train\n{LOGGING_COMMAND}\naver.cli.train.cmd_variants = logging_command"
    quiet = aver("variants", "-q", pre=pre)
    lines = quiet.stderr.strip().splitlines()
    assert quiet.returncode == 0 and [line.split()[2:4] for line in lines] == [
        ["WARNING", "aver.test:"],
        ["WARNING", "matplotlib.font_manager:"],
    ], quiet.stderr
    loud = aver("variants", pre=pre)
    assert loud.returncode == 0 and "library-bar" in loud.stderr and " INFO aver.test: " in loud.stderr
    assert " INFO matplotlib" not in loud.stderr and "DEBUG" not in loud.stderr


# -- 7. labelled bars ----------------------------------------------------------------------------
def test_pack_and_verify_bars_are_labelled(toy, tmp_path, capsys):
    assert main(["cache", "verify", toy]) == 0
    assert "verify: " in capsys.readouterr().err
    assert main(["cache", "pack", toy, str(tmp_path / "packed.zarr")]) == 0
    err = capsys.readouterr().err
    assert "pack: " in err and "verify: " in err  # the copy is verified before it is marked complete


# -- 8. help texts -------------------------------------------------------------------------------
def _help(command: str, flag: str) -> str:
    parser = make_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return " ".join(next(a for a in sub._actions if flag in a.option_strings).help.split())


@pytest.mark.parametrize("command", ["train", "cv", "sweep"])
def test_out_help_names_the_folders_default_out_makes(command):
    from aver.train.api import default_out
    from aver.train.systems import SYSTEMS

    text = _help(command, "--out")
    for system in SYSTEMS.names():
        out = default_out("caches/<store>.zarr", "<variant>", system, "<protocol>", "<runs>")
        spec = SYSTEMS.get(system)
        shown = out.replace(f"/{system}/", "/<model>/").replace("@<protocol>", "[@<protocol>]")
        if command == "train":
            shown += "/fold<k>"
        if command == "sweep":  # the sweep's folder holds the variants' folders
            shown = str(Path(default_out("caches/<store>.zarr", "v", system, "cache", "<runs>")).parent)
            shown = shown.replace(f"/{system}", "/<model>")
        assert shown in text, (system, shown, text)
        if not spec.system_folder:
            assert f"for {system} {shown}" in text, text


def test_train_help_adds_crops_the_readme_way_and_names_no_one_optimiser(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit.value.code == 0
    assert "aver extract ... --inputs crops,wave" in text and "inputs.crops" not in text
    assert "AdamW" not in text and "5e-6" not in text and "5e-06" not in text
    assert "each system's paper optimiser" in _help("train", "--lr")


# -- 9. the wav2vec2 download hint ---------------------------------------------------------------
def test_missing_wav2vec2_names_the_hf_command_that_is_installed():
    from aver.extract.encoders.audio import _missing_model_error

    msg = str(_missing_model_error("facebook/wav2vec2-large-robust", OSError("offline")))
    assert "`hf download facebook/wav2vec2-large-robust`" in msg
    hf = Path(sys.executable).parent / "hf"
    if not hf.is_file():
        pytest.skip(f"no {hf}: huggingface_hub < 0.34 (the message names huggingface-cli for it)")
    out = subprocess.run([str(hf), "download", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "REPO_ID" in out.stdout, out.stderr[-2000:]
