"""``aver qa``: a quality report of a cache (``aver.apps.qa``; base install: OpenCV, PyAV and
torchvision are used when installed)."""

from __future__ import annotations

import argparse

from aver.utils import echo


def register(sub) -> None:
    from . import kv_option

    p = sub.add_parser(
        "qa",
        help="write an HTML quality report of a cache (failures, face tracks, flow, durations, outliers)",
        description=(
            "Write one self-contained HTML page (PNGs and a per-clip CSV beside it, in <page>_files/) to "
            "read before training on a cache: clip counts, failures grouped by cause, per-clip face "
            "detection rate, interpolated frames, track jumps, optical-flow magnitude and audio vs video "
            "duration, histograms, outliers (robust rule stated on the page) and face / flow thumbnails "
            "of a sample of clips and of the worst clips by each measure."
        ),
    )
    p.add_argument("store", help="a .zarr path or fsspec URL")
    p.add_argument("--out", help="the HTML page to write (default: <dataset>-qa.html)")
    p.add_argument(
        "--data",
        help="raw-data folder (clips/video is relative to it): thumbnails and flow from the videos "
        "when the cache holds no face crops",
    )
    p.add_argument("--sample", type=int, default=12, help="clips in the random thumbnail sample (default 12)")
    kv_option(p, "--storage-option", "fsspec storage option for the URL")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip checking every committed clip against its recorded digests (faster; unreadable arrays "
        "are still reported)",
    )
    p.set_defaults(func=cmd_qa)


def cmd_qa(args: argparse.Namespace) -> int:
    """Write the page; exit 4 when a clip is damaged (listed on the page and here, one line each);
    exit 3, after writing it, when the page lacks what a missing extra gives (one line naming it)."""
    from aver.apps.qa import report
    from aver.errors import UserError
    from aver.overrides import parse_kv

    if args.sample < 0:
        raise UserError(f"--sample must be >= 0, not {args.sample}")
    missing = _missing(args)
    result = report(
        args.store,
        out=args.out,
        data=args.data,
        sample=args.sample,
        storage_options=parse_kv(args.storage_option, "--storage-option") or None,
        progress=not args.quiet,
        verify=not args.no_verify,
    )
    for problem in result.damage:
        echo(f"DAMAGED {problem}")
    if result.damage:
        clips = len({p.clip for p in result.damage if not p.table})
        echo(f"{args.store}: {clips} damaged clips: their measures are not to be trusted (see the page)")
    echo(result.page)
    if missing and not result.damage:
        from aver.errors import MissingExtraError

        # the page is written and says what it lacks; the status tells a script it is incomplete
        raise MissingExtraError(
            f"the page {result.page} lacks what {', '.join(missing)} give: pip install 'aver[extract]' "
            "(or pip install opencv-python-headless av torchvision)"
        )
    return 4 if result.damage else 0


def _missing(args: argparse.Namespace) -> list[str]:
    """What the page will lack: OpenCV (flow measures and images) or, with ``--data``, PyAV
    (decoding the videos) and torchvision (stage one's ``crop_faces``, cutting the crops). ``aver
    qa`` still writes the page, which says the same where each measure is missing."""
    import importlib.util

    wanted = {"cv2": "OpenCV (cv2: flow measures and images)"}
    if args.data:
        wanted["av"] = "PyAV (av: reading the --data videos)"
        wanted["torchvision"] = "torchvision (cutting face crops from the --data videos)"
    return [what for module, what in wanted.items() if importlib.util.find_spec(module) is None]
