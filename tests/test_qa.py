"""``aver qa``: the quality page rendered from real synthetic caches, read as a person reads it:
the counts, the failures and their causes, per-clip values equal to what the arrays say, the
images embedded, thumbnails omitted (and why) without crops or raw data, hostile text escaped; and
a headless-Chromium screenshot of the page (marked ``browser``)."""

from __future__ import annotations

import base64
import csv
import html
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import small_index
from markupsafe import escape

from aver import layout as L
from aver.apps.qa import BY_KEY, MEASURES, failure_groups, robust_bounds, spread, track_measures, write_report
from aver.cache import FeatureCache
from aver.overrides import apply_overrides

HOSTILE = "[decode] broken <script>alert('x')</script> & more"
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def crops_store(small_corpus, tiny_config, tmp_path_factory) -> str:
    """The small corpus extracted with face crops (8 per clip) and waveforms."""
    from aver.extract.pipeline import run_extraction

    cfg = apply_overrides(tiny_config, ["inputs.crops=true", "inputs.wave=true", "inputs.crop_frames=8"])
    url = str(tmp_path_factory.mktemp("qa_crops") / "synthetic.zarr")
    summary = run_extraction(cfg, small_index(small_corpus), url, progress=False)
    assert summary.failed == 0, summary.report()
    return url


@pytest.fixture(scope="module")
def damaged_store(extracted_store, tmp_path_factory) -> str:
    """A copy with two failures of one cause (different files, hostile text) and one clip whose face
    was found in only 2 frames."""
    from aver.store import CacheWriter

    url = str(tmp_path_factory.mktemp("qa_damaged") / "synthetic.zarr")
    shutil.copytree(extracted_store, url)
    writer = CacheWriter(url)
    writer.write_failure(1, f"a.mp4: {HOSTILE}")
    writer.write_failure(4, f"b.mp4: {HOSTILE}")
    g = L.open_root(url, "r+")
    n = int(g[L.N_FRAMES][2])
    mask = np.zeros(g[L.FACE_MASK].shape[1], bool)
    mask[:2] = True
    g[L.FACE_MASK][2] = mask
    assert n > 4
    return url


def _row(page: str, i: int) -> dict[str, str]:
    """The per-clip table's cells of clip ``i`` by measure key (as shown, HTML-unescaped)."""
    row = re.search(rf"<tr id='clip-{i}'>(.*?)</tr>", page, flags=re.S)
    assert row, f"no row for clip {i}"
    return {k: html.unescape(v) for k, v in re.findall(r"data-k='(\w+)'>([^<]*)<", row.group(1))}


def _count(page: str, what: str) -> int:
    return int(re.search(rf"id='n-{what}'>(\d+)<", page).group(1))


def _expected(g, i: int) -> dict[str, float]:
    """Measures of clip ``i`` computed straight from the arrays, independently of ``aver.apps.qa``."""
    n = int(g[L.N_FRAMES][i])
    mask, prob, box = g[L.FACE_MASK][i][:n], g[L.FACE_PROB][i][:n], g[L.FACE_BOX][i][:n].astype(float)
    side = box[:, 2] - box[:, 0]
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    move = [np.hypot(cx[t + 1] - cx[t], cy[t + 1] - cy[t]) / side[t] for t in range(n - 1)]
    size = [abs(side[t + 1] / side[t] - 1) for t in range(n - 1)]
    video = n / float(g[L.FPS][i])
    audio = int(g[L.N_WAVE][i]) / 16000 if L.has_array(g, L.N_WAVE) else int(g[L.N_AUDIO][i]) / 50.0
    return {
        "n_frames": n,
        "video_s": video,
        "audio_s": audio,
        "av_delta": audio - video,
        "detection": mask.sum() / n,
        "interpolated": n - mask.sum(),
        "face_prob": prob.mean(),
        "jumps": sum(m > 0.25 or s > 0.25 for m, s in zip(move, size, strict=True)),
        "centre_step": max(move),
        "size_step": max(size),
    }


def _direct_flow(g, i: int) -> tuple[float, float]:
    """Mean / p95 DIS flow magnitude over every consecutive pair of clip ``i``'s cached crops, on
    stage one's BT.601 luma (``to_gray``), with OpenCV called here directly."""
    import cv2
    import torch

    from aver.extract.flow.classical import to_gray

    k = int(g[L.N_CROPS][i])
    crops, index = g[L.CROPS][i][:k], g[L.CROP_INDEX][i][:k]
    gray = to_gray(torch.from_numpy(crops).permute(0, 3, 1, 2))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    mags = []
    for p in range(k - 1):
        f = dis.calc(gray[p], gray[p + 1], None)
        mags.append(np.hypot(f[..., 0], f[..., 1]).ravel() / (index[p + 1] - index[p]) / crops.shape[1] * 100)
    m = np.concatenate(mags)
    return float(m.mean()), float(np.percentile(m, 95))


def test_page_from_a_cache_with_crops(crops_store, tmp_path):
    """Counts, per-clip values equal to the arrays', flow from the cached crops, images embedded
    (and written beside the page), no script and no external URL."""
    pytest.importorskip("cv2")
    out = write_report(crops_store, out=tmp_path / "qa.html", sample=4)
    page = out.read_text()
    assert (_count(page, "total"), _count(page, "done"), _count(page, "failed"), _count(page, "pending")) == (
        6,
        6,
        0,
        0,
    )
    g = L.open_root(crops_store, "r")
    for i in range(6):
        row, want = _row(page, i), _expected(g, i)
        assert int(row["n_frames"]) == want.pop("n_frames")
        for key, value in want.items():
            assert row[key] == BY_KEY[key].fmt.format(value), (i, key, row[key], value)
    mean, p95 = _direct_flow(g, 3)
    assert _row(page, 3)["flow_mean"] == f"{mean:.2f}" and _row(page, 3)["flow_p95"] == f"{p95:.2f}"
    rows = list(csv.DictReader(open(tmp_path / "qa_files" / "clips.csv")))
    assert len(rows) == 6 and float(rows[3]["flow_mean"]) == pytest.approx(mean, rel=1e-4)
    assert "Measured for 6 of 6 done clips" in page and "the cached face crops" in page
    images = DATA_URI.findall(page)
    assert len(images) >= 1 + 4  # the histograms and the sample's thumbnails (at least)
    assert all(base64.b64decode(x)[:8] == b"\x89PNG\r\n\x1a\n" for x in images)
    assert "Sample (4 of 6 done clips)" in page and "thumbs-omitted" not in page
    written = sorted(p.name for p in (tmp_path / "qa_files").glob("*.png"))
    assert "histograms.png" in written and sum(n.startswith("thumb_") for n in written) >= 4
    assert "<script" not in page.lower() and not re.search(r"(src|href)=[\"']?(https?:)?//", page)
    assert "median ± 3.5 × max(1.4826 × MAD" in page  # the outlier rule is stated


def test_without_crops_or_data_thumbnails_are_omitted_and_said_why(extracted_store, tmp_path, capsys):
    """Through the CLI: exit 0, the page path printed; no thumbnails, no flow, and the page says why."""
    from aver.cli import main

    out = tmp_path / "report" / "plain.html"
    assert main(["qa", extracted_store, "--out", str(out), "--sample", "3", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    omitted = re.search(r"id='thumbs-omitted'>(.*?)</p>", page, flags=re.S).group(1)
    assert "Thumbnails omitted" in omitted and "no face crops" in omitted and "--data" in omitted
    assert "Flow unavailable for 6 clips" in page
    assert len(DATA_URI.findall(page)) == 1  # the histograms only
    assert not list((tmp_path / "report" / "plain_files").glob("thumb_*.png"))
    assert all(_row(page, i)["flow_mean"] == "–" for i in range(6))


def test_raw_data_folder_gives_flow_and_thumbnails(extracted_store, small_corpus, tmp_path):
    """No crops in the cache, but --data: crops are cut from the raw videos at the stored boxes."""
    pytest.importorskip("cv2")
    pytest.importorskip("av")
    out = write_report(extracted_store, out=tmp_path / "raw.html", data=small_corpus, sample=2)
    page = out.read_text()
    assert "thumbs-omitted" not in page and "crops cut at frames/face_box from the raw videos" in page
    assert "Measured for 6 of 6 done clips" in page
    flows = [float(_row(page, i)["flow_mean"]) for i in range(6)]
    assert all(np.isfinite(flows)) and max(flows) > 0
    assert len(list((tmp_path / "raw_files").glob("thumb_*.png"))) >= 2


def test_failures_grouped_by_cause_hostile_text_escaped_outliers_flagged(damaged_store, tmp_path):
    out = write_report(damaged_store, out=tmp_path / "damaged.html", sample=2)
    page = out.read_text()
    assert (_count(page, "done"), _count(page, "failed"), _count(page, "pending")) == (4, 2, 0)
    cache = FeatureCache(damaged_store)
    causes = re.findall(r"<tr><td>(\d+)</td><td class='t failure'>(.*?)</td>", page)
    assert [(int(n), html.unescape(c)) for n, c in causes] == [(2, HOSTILE)]
    assert f"{cache.ids[1]}: a.mp4: {escape(HOSTILE)}" in page
    assert "<script" not in page and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in page
    assert _row(page, 1)["detection"] == "–" and "<td class='t failed'>failed</td>" in page
    # the clip whose face was lost: 2 of n frames detected, flagged by the fixed limit (< 0.5)
    n = int(cache.lengths["frames"][2])
    assert _row(page, 2)["detection"] == f"{2 / n:.3f}" and _row(page, 2)["interpolated"] == str(n - 2)
    outliers = re.search(r"<table id='outliers'>(.*?)</table>", page, flags=re.S).group(1)
    assert f"<td class=t>{cache.ids[2]}</td><td class=t>detection rate" in outliers
    assert "class='detection bad'" in page and "Outliers (1 clip)" in page


def test_deleted_and_undecodable_chunks_are_listed_as_damage(extracted_store, tmp_path, capsys):
    """Regression: deleted chunks (read as zeros) gave "done 6, failed 0" and no warning, and an
    undecodable chunk ended in a traceback. Now both clips are named with their array on the page
    and in the terminal, the other clips are still measured, and the exit status is 4."""
    from aver.cli import main

    url = tmp_path / "synthetic.zarr"
    shutil.copytree(extracted_store, url)
    shutil.rmtree(url / "frames" / "features" / "c" / "1")  # clip 1's feature chunks deleted
    for chunk in (url / L.FACE_BOX / "c" / "3").rglob("*"):  # clip 3's face boxes unreadable
        if chunk.is_file():
            chunk.write_bytes(b"\x00garbage")
    out = tmp_path / "qa" / "page.html"
    assert main(["qa", str(url), "--out", str(out), "-q"]) == 4
    printed = capsys.readouterr().out
    ids = FeatureCache(str(url)).ids
    assert f"DAMAGED clip {ids[1]}: frames/features: chunk missing" in printed, printed
    assert f"DAMAGED clip {ids[3]}: {L.FACE_BOX}:" in printed, printed
    assert "2 damaged clips" in printed and printed.strip().endswith(str(out))
    page = out.read_text()
    assert _count(page, "damaged") == 2 and "id='damaged'" in page
    damaged = re.search(r"<h2 id='damaged'>(.*?)</table>", page, flags=re.S).group(1)
    assert f"<td class=t>{ids[1]}</td><td class=t>frames/features</td>" in damaged
    assert f"<td class=t>{ids[3]}</td><td class=t>{L.FACE_BOX}</td>" in damaged
    assert _row(page, 3)["detection"] == "–" and _row(page, 4)["detection"] != "–"
    assert main(["qa", extracted_store, "--out", str(tmp_path / "ok.html"), "-q"]) == 0  # intact: 0


def test_track_measures_find_jumps_and_gaps():
    box = np.tile(np.array([10.0, 10.0, 110.0, 110.0]), (8, 1))
    box[5:] += 60  # the centre moves 0.6 box sides between frames 4 and 5
    box[7, 2:] += 50  # and the box grows by 50 % at frame 7
    mask = np.array([1, 0, 0, 0, 1, 1, 0, 1], bool)
    m = track_measures(box, mask, np.where(mask, 0.9, 0.0))
    assert m["jumps"] == 2 and m["centre_step"] == pytest.approx(np.hypot(60, 60) / 100)
    assert m["size_step"] == pytest.approx(0.5) and m["longest_gap"] == 3 and m["interpolated"] == 4
    assert m["detection"] == 0.5 and m["face_prob"] == pytest.approx(0.45)
    assert track_measures(box[:1], mask[:1], np.ones(1))["jumps"] == 0


def test_robust_rule_and_fixed_limits():
    x = np.array([0.95, 0.96, 0.97, 0.98, 0.99, 1.0, 0.2, np.nan])
    lo, hi = robust_bounds(x, BY_KEY["detection"])
    assert hi == np.inf and 0.5 < lo < 0.95  # median 0.97 - 3.5 * max(MAD, 0.05)
    assert robust_bounds(x[:3], BY_KEY["detection"]) == (0.5, np.inf)  # too few: the fixed limit only
    delta = robust_bounds(np.zeros(10), BY_KEY["av_delta"])
    assert delta == (pytest.approx(-0.175), pytest.approx(0.175))  # s_min 0.05 x 3.5, inside +-0.5
    assert robust_bounds(x, BY_KEY["video_s"]) == (-np.inf, np.inf)  # shown, never flagged
    assert {m.bad for m in MEASURES} <= {"", "low", "high", "both"}


def test_failure_groups_and_spread():
    groups = failure_groups({0: "a.mp4: [decode] x", 3: "dir/b.mp4: [decode] x", 5: "odd error", 7: ""})
    assert groups[0] == ("[decode] x", [0, 3]) and ("odd error", [5]) in groups
    assert ("(no cause recorded)", [7]) in groups
    assert spread(10, 1).tolist() == [5] and spread(3, 16).tolist() == [0, 1, 2] and spread(0, 4).size == 0
    assert spread(100, 4).tolist() == [12, 37, 62, 87]


CHROMIUM = (
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
    "headless_shell",
)


@pytest.fixture
def chromium() -> str:
    """A Chromium binary on PATH, or the test is skipped (before any cache is extracted)."""
    binary = next((shutil.which(b) for b in CHROMIUM if shutil.which(b)), None)
    if binary is None:
        pytest.skip(
            f"no Chromium binary on PATH (looked for {', '.join(CHROMIUM)}): `make test-browser` installs it"
        )
    return binary


@pytest.mark.browser
def test_headless_chromium_screenshot_of_the_page(chromium, crops_store, tmp_path):
    """The page as a browser shows it: a screenshot that is not blank."""
    from matplotlib.image import imread

    page = write_report(crops_store, out=tmp_path / "qa.html", sample=6)
    shot = tmp_path / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += [f"--screenshot={shot}", "--window-size=1280,1800", Path(page).resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]
    img = imread(shot)
    assert img.shape[:2] == (1800, 1280) and shot.stat().st_size > 20_000
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 0.05 and len(np.unique((rgb[::97] * 255).astype(np.uint8), axis=0)) > 50


def test_crops_cut_from_the_raw_videos_are_the_crops_the_models_saw(crops_store, small_corpus):
    """With --data, qa cuts its crops as extraction did (stage one's decoding and crop_faces at the
    stored boxes, face.crop_size): resized as extraction resized them, they are the cached crops."""
    pytest.importorskip("av")
    pytest.importorskip("torchvision")
    import torch

    from aver.apps.qa import CropSource
    from aver.extract.inputs import resize_crops

    cache = FeatureCache(crops_store)
    source, g = CropSource(cache, small_corpus), cache.group
    side = int(cache.meta["config"]["face"]["crop_size"])
    for i in (0, 3):
        k = int(g[L.N_CROPS][i])
        raw = source.raw(i, g[L.CROP_INDEX][i][:k].tolist())
        assert raw.shape == (k, side, side, 3) and side != cache.inputs["crop_size"]
        stored = resize_crops(torch.from_numpy(raw).permute(0, 3, 1, 2), int(cache.inputs["crop_size"]))
        assert np.array_equal(stored, g[L.CROPS][i][:k]), i


def _png(data: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return (imread(io.BytesIO(data), format="png")[..., :3] * 255).round().astype(np.uint8)


def test_thumbnail_is_the_cached_crop_and_stage_ones_flow_image(crops_store):
    """A tile: the clip's middle cached crop, a white gap, and the flow image stage one makes of that
    pair (its DIS backend, normalise_flow, flow_to_image, with the cache's flow.eps / image_clip)."""
    pytest.importorskip("cv2")
    import torch

    from aver.apps.qa import clip_tile, measure_cache
    from aver.extract.config import FlowConfig
    from aver.extract.flow import build_flow_backend, flow_to_image, normalise_flow

    result, cache, source = measure_cache(crops_store, verify=False)
    g, i = cache.group, 2
    k = int(g[L.N_CROPS][i])
    a, b = g[L.CROPS][i][(k - 1) // 2], g[L.CROPS][i][(k - 1) // 2 + 1]  # the middle pair
    recorded = cache.meta["config"]["flow"]
    field = build_flow_backend(FlowConfig(backend="dis", variant="medium"), "cpu")(
        *(torch.from_numpy(c).permute(2, 0, 1)[None] for c in (a, b))
    )
    image = flow_to_image(normalise_flow(field, recorded["eps"], "clip"), recorded["image_clip"])[0]
    image = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    png, why = clip_tile(result, source, i)
    shown, s = _png(png), a.shape[0]
    assert why == "" and shown.shape == (s, 2 * s + 2, 3)
    assert np.array_equal(shown[:, :s], a) and np.array_equal(shown[:, s + 2 :], image)


def test_without_opencv_the_thumbnails_are_crops_only_and_the_page_says_why(
    crops_store, tmp_path, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)
    page = write_report(crops_store, out=tmp_path / "nocv.html", sample=2).read_text()
    assert "(no flow images: OpenCV is not installed)" in page and "Flow unavailable for 6 clips" in page
    assert "OpenCV (cv2) is not installed" in page and "thumbnails come from the cached crops" in page
    thumbs = sorted((tmp_path / "nocv_files").glob("thumb_*.png"))
    assert len(thumbs) >= 2 and all(_png(p.read_bytes()).shape == (112, 112, 3) for p in thumbs)
