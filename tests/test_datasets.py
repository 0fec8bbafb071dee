"""Dataset adapters and folds: parsing, speaker independence, VAVL CSV import."""

from __future__ import annotations

import numpy as np
import pytest

from aver.errors import ConfigError
from aver.extract.datasets import DatasetOptions, load_dataset
from aver.extract.datasets.folds import round_robin_groups, speaker_folds, vavl_folds
from aver.extract.datasets.ravdess import RAVDESS_GROUPS, parse_name
from aver.layout import TEST, TRAIN, UNUSED, VALIDATION


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _assert_speaker_independent(folds, speakers):
    speakers = np.asarray(speakers)
    for row in folds:
        sets = [set(speakers[row == code]) for code in (TRAIN, VALIDATION, TEST)]
        assert all(sets), "every split has speakers"
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_ravdess_takes_speech_av_only_and_uses_the_published_split(tmp_path):
    for actor in range(1, 25):
        for emo in (1, 5):
            _touch(tmp_path / f"Actor_{actor:02d}" / f"01-01-{emo:02d}-01-01-01-{actor:02d}.mp4")
            _touch(
                tmp_path / f"Actor_{actor:02d}" / f"02-01-{emo:02d}-01-01-01-{actor:02d}.mp4"
            )  # silent copy
    _touch(tmp_path / "Actor_01" / "03-01-01-01-01-01-01.wav")
    index = load_dataset("ravdess", DatasetOptions(data=tmp_path))
    assert len(index.clips) == 48
    assert all(c.clip_id.startswith("01-01-") for c in index.clips)
    assert index.classes[index.clips[1].label] == "angry"
    assert index.folds_source == "ravdess-mmer-5fold"
    assert index.folds.shape == (5, 48)
    speakers = [c.speaker for c in index.clips]
    _assert_speaker_independent(index.folds, speakers)
    test_actors = {int(s) for s, code in zip(speakers, index.folds[0], strict=True) if code == TEST}
    assert test_actors == set(RAVDESS_GROUPS[0])
    assert "skipped" in index.notes[0]


def test_parse_name():
    assert parse_name("01-01-03-02-01-02-12")["actor"] == 12
    assert parse_name("not-a-ravdess-name") is None


def test_round_robin_folds_are_deterministic_and_disjoint():
    speakers = [f"{1000 + i % 17}" for i in range(200)]
    groups = round_robin_groups(speakers, 5)
    folds = speaker_folds(speakers, groups)
    assert np.array_equal(folds, speaker_folds(speakers, round_robin_groups(speakers, 5)))
    _assert_speaker_independent(folds, speakers)
    # every speaker is tested exactly once across folds
    for s in set(speakers):
        col = folds[:, speakers.index(s)]
        assert (col == TEST).sum() == 1 and (col == VALIDATION).sum() == 1


def test_too_few_speakers_is_a_clear_error():
    with pytest.raises(ConfigError, match="at least 3 speakers"):
        round_robin_groups(["a", "b"], 5)


def test_cremad_pairs_flv_with_wav(tmp_path):
    for actor in (1001, 1002, 1003, 1004, 1005):
        for code in ("ANG", "SAD"):
            _touch(tmp_path / "VideoFlash" / f"{actor}_DFA_{code}_XX.flv")
            if actor != 1005:
                _touch(tmp_path / "AudioWAV" / f"{actor}_DFA_{code}_XX.wav")
    index = load_dataset("cremad", DatasetOptions(data=tmp_path))
    assert len(index.clips) == 10
    assert index.clips[0].audio.endswith("1001_DFA_ANG_XX.wav")
    assert index.clips[-1].audio is None
    assert index.classes[index.clips[1].label] == "sad"
    _assert_speaker_independent(index.folds, [c.speaker for c in index.clips])


def _vavl_csv(path, rows, label_cols=("angry", "sad")):
    header = ["FileName", *label_cols, "SpkrID", "Gender", "Split_Set"]
    lines = [",".join(header)] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_vavl_fold_import(tmp_path):
    ids = ["1001_DFA_ANG_XX", "1002_DFA_ANG_XX", "1003_DFA_ANG_XX", "1004_DFA_ANG_XX"]
    speakers = ["1001", "1002", "1003", "1004"]
    for k in (1, 2):
        splits = (
            ["Train", "Train", "Development", "Test"] if k == 1 else ["Test", "Train", "Train", "Development"]
        )
        rows = [
            (f"{cid}.wav", 0.5, 0.5, spk, "F", s)
            for cid, spk, s in zip(ids[:3], speakers, splits, strict=False)
        ]
        rows.append(("9999_XXX_ANG_XX.wav", 1, 0, "9999", "M", "Train"))  # not in the dataset: ignored
        _vavl_csv(tmp_path / f"label_consensus_{k}.csv", rows)
    folds, source = vavl_folds(str(tmp_path / "label_consensus_{fold}.csv"), ids, speakers)
    assert folds.shape == (2, 4)
    assert folds[0].tolist() == [TRAIN, TRAIN, VALIDATION, UNUSED]
    assert folds[1].tolist() == [TEST, TRAIN, TRAIN, UNUSED]
    assert source.startswith("csv:")


def test_vavl_fold_file_with_bad_split_names_line(tmp_path):
    _vavl_csv(tmp_path / "f1.csv", [("a.wav", 1, 0, "1", "F", "Holdout")])
    with pytest.raises(ConfigError, match="line 2"):
        vavl_folds(str(tmp_path / "f1.csv"), ["a"], ["1"])


def test_mspimprov_reads_vavl_labels(tmp_path):
    names = [f"MSP-IMPROV-S0{s}A-F0{s}-P-FM01" for s in range(1, 5)]
    for n in names:
        _touch(tmp_path / "Video" / f"{n}.avi")
        _touch(tmp_path / "Audio" / f"{n}.wav")
    csv = tmp_path / "labels_consensus_1.csv"
    rows = [(f"{n}.wav", 3.2, 2.5, 4.0, f"S{i + 1}", "F", "Train") for i, n in enumerate(names)]
    csv.write_text(
        "FileName,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n"
        + "\n".join(",".join(map(str, r)) for r in rows)
        + "\n"
    )
    index = load_dataset("mspimprov", DatasetOptions(data=tmp_path, labels=csv, folds=str(csv)))
    assert index.targets == ["arousal", "valence", "dominance"]
    assert index.clips[0].targets == (3.2, 2.5, 4.0)
    assert index.clips[0].audio.endswith(".wav")
    assert (index.folds == TRAIN).all()


def test_folder_adapter_csv(tmp_path):
    rows = ["video,speaker,label,valence"]
    for i in range(6):
        _touch(tmp_path / "media" / f"clip{i}.mp4")
        rows.append(f"media/clip{i}.mp4,spk{i % 3},{'happy' if i % 2 else 'sad'},{i / 10}")
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    index = load_dataset("folder", DatasetOptions(labels=tmp_path / "clips.csv", targets=("valence",)))
    assert index.classes == ["happy", "sad"]
    assert [c.clip_id for c in index.clips][:2] == ["clip0", "clip1"]
    assert index.clips[1].targets == (0.1,)
    assert index.clips[0].video == str(tmp_path / "media" / "clip0.mp4")


def test_folder_adapter_missing_column_names_the_file(tmp_path):
    (tmp_path / "clips.csv").write_text("video,label\nx.mp4,a\n")
    with pytest.raises(ConfigError, match="speaker"):
        load_dataset("folder", DatasetOptions(labels=tmp_path / "clips.csv"))


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="ravdess"):
        load_dataset("nope", DatasetOptions())


FOLDER_HEADER = "video,speaker,label,valence\n"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("a.mp4,s1,happy,0.1\nb.mp4,s2\n", r"clips.csv, line 3: too few fields"),
        (
            "a.mp4,s1,happy,0.1\na.mp4,s2,sad,0.2\nc.mp4,s3,sad,0.3\n",
            r"clips.csv: clip ids must be unique.*\['a'\]",
        ),
        ("a.mp4,s1,happy,nan\n", r"clips.csv, line 2: target valence='nan' is not finite"),
        ("a.mp4,s1,happy,inf\n", r"line 2: target valence='inf' is not finite"),
        ("a.mp4,s1,happy,x\n", r"line 2: target valence='x' is not a number"),
    ],
)
def test_folder_csv_problems_are_one_clear_error(tmp_path, body, match):
    (tmp_path / "clips.csv").write_text(FOLDER_HEADER + body)
    with pytest.raises(ConfigError, match=match):
        load_dataset("folder", DatasetOptions(labels=tmp_path / "clips.csv", targets=("valence",)))


def test_folder_csv_in_latin1_names_the_file(tmp_path):
    (tmp_path / "clips.csv").write_bytes((FOLDER_HEADER + "caf\xe9.mp4,s1,happy,0.1\n").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"clips.csv: not UTF-8 text"):
        load_dataset("folder", DatasetOptions(labels=tmp_path / "clips.csv", targets=("valence",)))


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (["a.wav,s1,Train", "b.wav,s2"], r"line 3: too few fields"),
        (["a.wav,s1,Train", "a.wav,s1,Test"], r"line 3: a is listed again with another Split_Set"),
    ],
)
def test_vavl_csv_problems_are_one_clear_error(tmp_path, rows, match):
    (tmp_path / "f1.csv").write_text("FileName,SpkrID,Split_Set\n" + "\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match=match):
        vavl_folds(str(tmp_path / "f1.csv"), ["a", "b"], ["s1", "s2"])


CONSENSUS_COLS = ("angry", "sad", "disgust", "fear", "neutral", "happy")  # VAVL's column order


def _cremad_with_consensus(tmp_path):
    """9 actors x (ANG, SAD); VAVL-like files list 8 of the 9 actors (actor 1009 in no fold)."""
    for actor in range(1001, 1010):
        for code in ("ANG", "SAD"):
            _touch(tmp_path / "VideoFlash" / f"{actor}_DFA_{code}_XX.flv")
    shares = {
        "ANG": (0.6, 0.2, 0.0, 0.0, 0.2, 0.0),  # agrees with the acted label
        "SAD": (0.0, 0.2, 0.0, 0.0, 0.8, 0.0),  # raters say neutral: argmax differs
    }
    for k in (1, 2):
        rows = []
        for j, actor in enumerate(range(1001, 1009)):
            split = ["Train"] * 6 + ["Development", "Test"]
            split = split[(j + k) % 8]
            for code in ("ANG", "SAD"):
                rows.append((f"{actor}_DFA_{code}_XX.wav", *shares[code], actor, "F", split))
        _vavl_csv(tmp_path / f"label_consensus_{k}.csv", rows, label_cols=CONSENSUS_COLS)
    return str(tmp_path / "label_consensus_{fold}.csv")


def test_cremad_consensus_labels_hard_and_soft(tmp_path):
    pattern = _cremad_with_consensus(tmp_path)
    acted = load_dataset("cremad", DatasetOptions(data=tmp_path, folds=pattern))
    assert acted.soft_labels is None and acted.label_source == "file name"
    opts = DatasetOptions(data=tmp_path, folds=pattern, options={"labels": "consensus"})
    index = load_dataset("cremad", opts)
    names = {c.clip_id: index.classes[c.label] if c.label >= 0 else None for c in index.clips}
    assert names["1001_DFA_ANG_XX"] == "angry" and names["1001_DFA_SAD_XX"] == "neutral"
    assert names["1009_DFA_ANG_XX"] is None  # in no file: no label
    i = [c.clip_id for c in index.clips].index("1001_DFA_SAD_XX")
    soft = dict(zip(index.classes, index.soft_labels[i].tolist(), strict=True))
    assert soft["neutral"] == pytest.approx(0.8) and soft["sad"] == pytest.approx(0.2)
    assert np.isnan(index.soft_labels[[c.clip_id for c in index.clips].index("1009_DFA_SAD_XX")]).all()
    assert index.label_source.startswith("consensus argmax:")
    notes = " ".join(index.notes)
    assert "differs from the acted (file-name) label for 8 (50.0 %)" in notes
    assert "2 of 18 clips are in no fold" in notes and "skip_unused=true" in notes
    table = index.table()
    assert table.soft_labels.shape == (18, 6) and table.label_source == index.label_source


def test_cremad_skip_unused_leaves_out_clips_no_fold_uses(tmp_path):
    pattern = _cremad_with_consensus(tmp_path)
    opts = DatasetOptions(
        data=tmp_path, folds=pattern, options={"labels": "consensus", "skip_unused": "true"}
    )
    index = load_dataset("cremad", opts)
    assert len(index.clips) == 16 and index.folds.shape == (2, 16) and index.soft_labels.shape == (16, 6)
    assert not any(c.clip_id.startswith("1009") for c in index.clips)
    assert any("left out 2 clips that no fold uses" in n for n in index.notes)


def test_cremad_consensus_problems_are_clear(tmp_path):
    pattern = _cremad_with_consensus(tmp_path)
    with pytest.raises(ConfigError, match="--labels or --fold-files"):
        load_dataset("cremad", DatasetOptions(data=tmp_path, options={"labels": "consensus"}))
    with pytest.raises(ConfigError, match="choose file or consensus"):
        load_dataset("cremad", DatasetOptions(data=tmp_path, options={"labels": "raters"}))
    with pytest.raises(ConfigError, match="unknown --dataset-option"):
        load_dataset("cremad", DatasetOptions(data=tmp_path, options={"lables": "consensus"}))
    # consensus labels with generated folds: the unlabelled clips would be trained on
    with pytest.raises(ConfigError, match="without a label are in a fold"):
        load_dataset("cremad", DatasetOptions(data=tmp_path, labels=pattern, options={"labels": "consensus"}))
    # two files disagreeing about one clip
    other = tmp_path / "label_consensus_2.csv"
    other.write_text(other.read_text().replace("0.6,0.2,0.0", "0.2,0.6,0.0", 1))
    with pytest.raises(ConfigError, match="other consensus shares"):
        load_dataset("cremad", DatasetOptions(data=tmp_path, folds=pattern, options={"labels": "consensus"}))


def test_every_adapter_refuses_unknown_options(tmp_path):
    with pytest.raises(ConfigError, match="unknown --dataset-option.*skip_unused"):
        load_dataset("ravdess", DatasetOptions(data=tmp_path, options={"n_actors": 3}))
