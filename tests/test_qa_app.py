"""``aver.apps.qa`` (issue 20): the page is rendered by Jinja2 with autoescaping, so hostile clip
ids and failure causes are shown as text; the crops are stage one's (its rotation-aware decoding
and ``crop_faces``) and the flow images stage one's (its DIS backend, ``normalise_flow`` and
``flow_to_image``). The tests that need an extracted cache with crops are in ``test_qa.py``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from aver.testing import build_feature_cache

HOSTILE_ID = '<script>alert("id")</script>\'&x'
HOSTILE_CAUSE = "[decode] <img src=x onerror=alert(1)> \"quoted\" & 'single'"


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory) -> str:
    """A toy cache whose clip ids, dataset name and one failure cause are HTML."""
    from aver.store import CacheWriter

    url = str(tmp_path_factory.mktemp("qa_hostile") / "h.zarr")
    build_feature_cache(url, n_clips=8, dataset="<b>ds</b>&", id_prefix=HOSTILE_ID)
    CacheWriter(url).write_failure(3, f"x.mp4: {HOSTILE_CAUSE}")
    return url


def test_hostile_ids_and_causes_are_escaped_by_autoescape(hostile_store, tmp_path):
    from markupsafe import escape

    from aver.apps.qa import write_report
    from aver.cache import FeatureCache

    page = write_report(hostile_store, out=tmp_path / "qa.html").read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page and "<b>ds" not in page
    ids = FeatureCache(hostile_store).ids
    assert "&lt;script&gt;alert(&#34;id&#34;)&lt;/script&gt;&#39;&amp;x" in str(escape(ids[0]))
    for i in range(8):  # every id in the per-clip table, escaped (the row's id attribute is a number)
        assert f"<tr id='clip-{i}'><td>{i}</td><td class=t>{escape(ids[i])}</td>" in page
    cause = re.search(r"<td class='t failure'>(.*?)</td>", page).group(1)
    assert cause == str(escape(HOSTILE_CAUSE))
    assert f"{escape(ids[3])}: x.mp4: {escape(HOSTILE_CAUSE)}" in page
    assert "<title>aver qa: &lt;b&gt;ds&lt;/b&gt;&amp;</title>" in page
    assert "Cache quality report: &lt;b&gt;ds&lt;/b&gt;&amp;</h1>" in page


def test_templates_escape_every_value_and_show_controls_as_text():
    from markupsafe import Markup

    from aver.apps.qa.page import Page, environment

    env = environment()
    assert env.autoescape is True
    page = Page(Path("unused"))
    page.add("notes", n=1, notes=[("a\x1b[2Jb", "<i>n</i>\u202e")])
    html = "\n".join(page.parts)
    assert "<li>a\\x1b[2Jb: &lt;i&gt;n&lt;/i&gt;\\u202e</li>" in html  # control + bidi as escapes
    image = page.img("x.png", b"\x89PNG", 'alt"<>')
    rendered = env.get_template("macros.html.j2").module.img(image)
    assert isinstance(rendered, Markup) and 'alt="alt&#34;&lt;&gt;"' in rendered


def test_the_page_code_builds_no_html():
    """The HTML lives in the templates: ``page.py`` holds no tag (no f-string HTML from data)."""
    import aver.apps.qa.page as page

    source = Path(page.__file__).read_text()
    assert not re.findall(r"<(?:p|td|th|tr|table|h\d|li|ul|img|span|div|figure|br)\b", source)
    templates = Path(page.__file__).with_name("templates")
    assert {p.name for p in templates.glob("*.html.j2")} >= {"page.html.j2", "clips.html.j2", "rule.html.j2"}


def test_aver_qa_is_the_app_reexported():
    import aver.apps.qa as app
    import aver.qa as shim

    assert shim.write_report is app.write_report and shim.report is app.report
    assert shim.MEASURES is app.MEASURES and shim.Page is app.Page
    assert set(app.__all__) <= set(dir(shim))


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """Two 64 px crops of a synthetic face, the second shifted 3 px right and 1 px down."""
    from aver.extract.synthetic import render_frames

    frame = render_frames(1, 25, 96, 96, actor=1, emotion="happy")[0]
    return np.ascontiguousarray(frame[10:74, 10:74]), np.ascontiguousarray(frame[9:73, 7:71])


def test_flow_image_and_measure_are_stage_ones_for_the_same_pair():
    """qa's flow image of a pair is stage one's (its DIS backend, normalise_flow, flow_to_image),
    with the eps and image_clip the cache records; the measure is that flow's magnitude."""
    pytest.importorskip("cv2")
    import torch

    from aver.apps.qa import Flow
    from aver.extract.config import FlowConfig
    from aver.extract.flow import build_flow_backend, flow_to_image, normalise_flow

    a, b = _pair()
    recorded = {"backend": "raft", "eps": 2.0, "image_clip": 8.0}  # the measure is always DIS
    flow = Flow(recorded)
    backend = build_flow_backend(FlowConfig(backend="dis", variant="medium"), "cpu")
    x, y = (torch.from_numpy(c).permute(2, 0, 1)[None] for c in (a, b))
    field = backend(x, y)
    want = flow_to_image(normalise_flow(field, 2.0, "clip"), 8.0)[0]
    want = (want * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    got = flow.image(a, b)
    assert got.dtype == np.uint8 and got.shape == (64, 64, 3) and np.array_equal(got, want)
    assert not np.array_equal(got, Flow({}).image(a, b))  # the recorded settings are used
    u, v = field[0, 0].numpy(), field[0, 1].numpy()
    assert np.median(u) == pytest.approx(3, abs=0.5) and np.median(v) == pytest.approx(1, abs=0.5)
    mag = np.hypot(u, v) / 2 / 64 * 100  # a pair two frames apart, % of the crop side per frame
    mean, p95 = flow.stats(a[None], b[None], np.array([2.0]))
    assert mean == pytest.approx(mag.mean(), rel=1e-5) and p95 == pytest.approx(
        np.percentile(mag, 95), rel=1e-5
    )


def test_raw_crops_of_a_rotated_video_are_crop_faces_of_the_upright_frames(tmp_path):
    """A phone video (display rotation 90°): qa decodes it upright, as stage one does, and cuts the
    crops with stage one's crop_faces."""
    av = pytest.importorskip("av")
    pytest.importorskip("torchvision")
    from aver.apps.qa import raw_crops
    from aver.extract.faces import crop_faces
    from aver.extract.media import iter_video_frames
    from aver.extract.synthetic import render_frames

    upright = render_frames(6, 25, 160, 240, actor=1, emotion="happy")  # portrait: 240 high, 160 wide
    stored = np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2)))  # as the phone stores it
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = stored.shape[2], stored.shape[1], "yuv420p"
        s.set_display_rotation(90)
        for i, f in enumerate(stored):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    boxes = np.array([[30 + t, 60, 130 + t, 160] for t in range(6)], np.float32)
    got = raw_crops(path, boxes, [1, 4], 48, block=6)
    decoded = np.concatenate([f for f, _ in iter_video_frames(path, 6)])
    assert decoded.shape == upright.shape  # stage one's decoding: upright
    want = crop_faces(decoded, boxes, 48)[[1, 4]].permute(0, 2, 3, 1).numpy()  # one block of 6 frames
    assert got.shape == (2, 48, 48, 3) and np.array_equal(got, want)
    truth = crop_faces(upright[[1, 4]], boxes[[1, 4]], 48).permute(0, 2, 3, 1).numpy()
    assert np.abs(got.astype(int) - truth.astype(int)).mean() < 6  # the upright picture, codec error only
    with pytest.raises(LookupError, match="6 frames decoded, fewer than the 10 the stored boxes need"):
        raw_crops(path, np.tile(boxes, (2, 1)), [9], 48)  # a frame the video does not have


def test_qa_without_opencv_or_pyav_names_them_on_the_page(hostile_store, tmp_path, monkeypatch):
    """The base install: no OpenCV, no PyAV. The page is still written and says what is missing."""
    from aver.apps.qa import write_report

    for module in ("cv2", "av"):
        monkeypatch.setitem(sys.modules, module, None)
    page = write_report(hostile_store, out=tmp_path / "base.html", data=tmp_path).read_text()
    source = re.search(r"<li id='flow-source'>(.*?)</li>", page, flags=re.S).group(1)
    assert "OpenCV (cv2) is not installed" in source and "PyAV (av) not installed" in source
    omitted = re.search(r"id='thumbs-omitted'>(.*?)</p>", page, flags=re.S).group(1)
    assert "PyAV (av) not installed" in omitted
    assert len(re.findall(r"data-k='flow_mean'>–<", page)) == 8
