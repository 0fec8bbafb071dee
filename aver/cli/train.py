"""``aver train``, ``aver cv``, ``aver evaluate`` and ``aver variants`` (stage two; base install)."""

from __future__ import annotations

import argparse

from aver.utils import echo

# CLI flag -> TrainConfig field (the same as ``--set field=value``).
FLAG_FIELDS = {
    "epochs": "epochs",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "batch_size": "data.batch_size",
    "patience": "patience",
    "seed": "seed",
    "head": "head",
    "device": "device",
}


def _common(p: argparse.ArgumentParser, command: str) -> None:
    """The options of train, cv and sweep (``command``; a sweep names ``--variants``/``--protocols``
    /``--seeds`` in the plural instead of ``--variant``/``--protocol``/``--seed``)."""
    from . import choice_option, kv_option, set_option

    sweep = command == "sweep"
    p.add_argument("--cache", required=True, help="the dataset's store: a .zarr path or fsspec URL")
    _out_options(p, command)
    crops = (
        "; a system that trains on face crops and waveforms needs a cache with them: aver extract ... "
        "--inputs crops,wave (`aver variants` says what each trains on)"
    )
    if sweep:  # None: the --table's system, else the default one
        help_ = "the system to train, %(choices)s (default: the --table's system, else de3)" + crops
        choice_option(p, "--model", "aver.train.systems", "SYSTEMS", help_, default=None)
    else:
        help_ = "the system to train, %(choices)s (default %(default)s)" + crops
        choice_option(p, "--model", "aver.train.systems", "SYSTEMS", help_, default="de3")
    if not sweep:
        _single(p)
    choice_option(
        p,
        "--preset",
        "aver.train.systems",
        "PRESET_NAMES",
        "the system's preset, %(choices)s: paper = its paper's sizes and optimisation (default); tiny = "
        "tests, demo",
        default="paper",
    )
    p.add_argument("--device", help="cpu (default), cuda or cuda:N")
    p.add_argument("--epochs", type=int, help="most epochs (default: the system's preset)")
    p.add_argument(
        "--lr",
        type=float,
        help="learning rate (default: the preset's; `aver variants` lists each system's paper optimiser)",
    )
    p.add_argument("--weight-decay", type=float, help="weight decay (default: the system's preset)")
    p.add_argument("--batch-size", type=int, help="clips per batch")
    p.add_argument("--patience", type=int, help="epochs without validation gain before stopping")
    if not sweep:
        p.add_argument("--seed", type=int, help="random seed (runs with one seed are reproducible on CPU)")
    choice_option(
        p,
        "--head",
        "aver.train.heads",
        "HEADS",
        "head reported on test, %(choices)s (default: best on validation)",
        extra=("best",),
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over, ignoring a checkpoint in --out (resuming is the default)",
    )
    set_option(p, "model.d_model=256 or data.audio_window=20")
    kv_option(p, "--storage-option", "fsspec storage option for the cache URL")


def _single(p: argparse.ArgumentParser) -> None:
    from . import choice_option

    p.add_argument(
        "--variant",
        metavar="NAME",
        help="an ablation of the model (`aver variants --model M` lists them; default: the full model)",
    )
    choice_option(
        p,
        "--protocol",
        "aver.train.protocols",
        "PROTOCOLS",
        "folds: %(choices)s (default cache: the folds stored in the cache; avtca-random is speaker-leaky)",
        default="cache",
    )


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="train this many runs at once on a local Dask cluster (with --device cuda: one worker per "
        "GPU, CUDA_VISIBLE_DEVICES pinned; on the CPU the cores are shared out)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a running Dask cluster, e.g. tcp://host:8786 (`dask scheduler`, `dask worker` on "
        "each machine; the cache and --out must be reachable from every worker)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for --scheduler to answer (default 10)",
    )


# The default --out of each command, as ``aver.train.api.default_out`` makes it (<store>: the
# cache's name without .zarr; DE-III's folders predate systems and have no <model> level).
OUT_HELP = {
    "train": "run folder (default <runs>/<store>/<model>/<variant>[@<protocol>]/fold<k>; for de3 "
    "<runs>/<store>/<variant>[@<protocol>]/fold<k>, without <model>; <store>: the cache's name)",
    "cv": "folder of the fold runs fold<k> (default <runs>/<store>/<model>/<variant>[@<protocol>]; for "
    "de3 <runs>/<store>/<variant>[@<protocol>], without <model>; <store>: the cache's name; with "
    "--protocols and --out: <out>@<protocol>, <out> itself for cache)",
    "sweep": "folder of the sweep (default <runs>/<store>/<model>; for de3 <runs>/<store>; <store>: the "
    "cache's name); its runs: <out>/<variant>[@<protocol>]/fold<k>[/seed<s>]",
}


def _out_options(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--out", help=OUT_HELP[command])
    p.add_argument("--runs", default="runs", help="where default run directories go (default runs)")


def register(sub) -> None:
    from . import choice_option, kv_option

    p = sub.add_parser("train", help="train one fold on a cache")
    _common(p, "train")
    p.add_argument("--fold", type=int, default=1, help="fold number, from 1")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("cv", help="train every fold, then mean ± std across folds")
    _common(p, "cv")
    p.add_argument("--folds", help="comma-separated fold numbers (default: all)")
    p.add_argument(
        "--seeds", type=int, default=1, help="train every fold with this many seeds (seed, seed+1, ...)"
    )
    _engine_options(p)
    p.add_argument(
        "--protocols",
        metavar="A,B",
        help="cross-validate under each fold protocol (e.g. cache,avtca-random) and print them side by "
        "side: what a speaker-leaky split adds (each to <out>@<protocol>)",
    )
    p.set_defaults(func=cmd_cv)
    _sweep_parser(sub)
    p = sub.add_parser(
        "evaluate",
        help="re-score a run on its cache, or on a cache of another dataset made with the same extractors",
    )
    p.add_argument("--run", required=True, help="a run folder written by `aver train`")
    p.add_argument("--cache", required=True)
    kv_option(p, "--storage-option", "fsspec storage option for the cache URL")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("report", help="our runs beside the paper's tables: report.md and report.html")
    p.add_argument("runs", help="a folder of runs (searched recursively)")
    p.add_argument("--out", help="the Markdown file to write (default RUNS/report.md; .html beside it)")
    p.set_defaults(func=cmd_report)
    _predict_parser(sub)
    p = sub.add_parser("variants", help="list the models and their variants (the papers' ablations)")
    choice_option(p, "--model", "aver.train.systems", "SYSTEMS", "only this model: %(choices)s")
    p.set_defaults(func=cmd_variants)


def _sweep_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="a plan of variants × folds × seeds on Dask, with paired statistics against the full model",
        description="Trains every variant (or the variants of a paper's table) on every fold with every "
        "seed, each run an ordinary run folder (<out>/<variant>[@<protocol>]/fold<k>[/seed<s>]); runs "
        "already complete are read back, so the same command resumes a stopped sweep. Then per variant "
        "mean, sample std and confidence interval, and against the full model the paired difference with "
        "its interval, paired t-test and Wilcoxon p-values (Holm-corrected) and a verdict: sweep.md, "
        "sweep.csv, sweep.json and sweep_forest.png in --out. Exits 8 when a run failed (the others "
        "complete; the summary names each cause).",
    )
    _common(p, "sweep")
    p.add_argument(
        "--variants",
        metavar="A,B",
        help="the variants to run (`aver variants --model M`); the full model is added",
    )
    p.add_argument(
        "--table",
        metavar="SYSTEM:N",
        help="the variants (and fold protocol) of a table of a system's paper, e.g. de3:2, de3:3, "
        "mocanu2023:1, avtca:9",
    )
    p.add_argument("--folds", help="fold numbers: 1-5, 1,3,5 or 1-3,5 (default: all)")
    p.add_argument("--seeds", help="seeds: 0,1,2 or 0-4 (default: the preset's one seed)")
    p.add_argument(
        "--protocols",
        metavar="A,B",
        help="fold protocols to run each variant under (default: the table's, else cache); each variant "
        "is compared with the full model under the same protocol",
    )
    _engine_options(p)
    p.add_argument(
        "--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)"
    )
    p.add_argument(
        "--alpha", type=float, default=0.05, help="significance level of the verdicts (default 0.05)"
    )
    p.add_argument(
        "--test",
        choices=("t", "wilcoxon"),
        default="t",
        help="the test the verdict rests on, Holm-corrected (default t: the paired t-test; with 5 runs "
        "Wilcoxon cannot reach p < 0.05)",
    )
    p.set_defaults(func=cmd_sweep)


def _predict_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="a trained run on new videos: features made as its cache's were, then each head's scores",
        description="Extracts each video with exactly the models and configuration of the cache the run "
        "was trained on (weights checked by sha256), then prints per file the predicted label and each "
        "head's probabilities (or values). Exits 1 only when every file failed.",
    )
    p.add_argument("run", help="a run folder written by `aver train` (its checkpoint/ and config.json)")
    p.add_argument("videos", nargs="+", help="video files or folders (searched recursively)")
    p.add_argument("--out", help="write the table to this .csv or .json (timeline plots go beside it)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--timeline", action="store_true", help="score sliding windows over each video")
    p.add_argument("--window", type=float, default=4.0, help="timeline window in seconds (default 4)")
    p.add_argument("--hop", type=float, default=1.0, help="timeline hop in seconds (default 1)")
    p.add_argument("--face-weights", help="the EfficientNet weights, where they are on this machine")
    p.add_argument("--audio-model", help="the wav2vec2 model (folder or hub id), where it is on this machine")
    p.add_argument("--flow-weights", help="the flow weights, where they are on this machine")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aver.errors import require_modules
    from aver.extract.api import EXTRACT_MODULES

    # before the run is read: predicting extracts the videos, which needs the [extract] extra
    require_modules("extract", EXTRACT_MODULES, "aver predict")
    from aver.apps.prediction import predict
    from aver.utils import check_out_dir, require_device

    require_device(args.device)
    if args.out:
        check_out_dir(Path(args.out).parent, f"--out {args.out}: its folder")

    weights = {
        key: value
        for key, value in (
            ("image.weights", args.face_weights),
            ("audio.model", args.audio_model),
            ("flow.weights", args.flow_weights),
        )
        if value
    }
    rows = predict(
        args.run,
        args.videos,
        device=args.device,
        out=args.out,
        timeline=args.timeline,
        window_s=args.window,
        hop_s=args.hop,
        weights=weights,
        progress=not args.quiet,
    )
    for r in rows:
        if r["status"] != "ok":
            cause = r["error"] if r["error"].startswith(r["file"]) else f"{r['file']}: {r['error']}"
            echo(f"FAILED {cause}")
            continue
        span = f" [{r['start_s']:.2f}-{r['end_s']:.2f} s]" if "start_s" in r else ""
        head = r["head"]
        scores = "  ".join(f"{k[len(head) + 1 :]} {v:.3f}" for k, v in r.items() if k.startswith(f"{head}_"))
        label = f"{r['prediction']} " if "prediction" in r else ""
        echo(f"{r['clip']}{span}: {label}({head} head: {scores})")
    if args.out:
        echo(f"table: {args.out}")
    return 0 if any(r["status"] == "ok" for r in rows) or not rows else 1


def _config(args: argparse.Namespace, fold: int, out: str):
    from aver.overrides import parse_kv
    from aver.train.config import make_config

    from . import flag_overrides

    return make_config(
        args.preset,
        flag_overrides(args, FLAG_FIELDS) + list(args.set),
        cache=args.cache,
        fold=fold,
        out=out,
        system=args.model,
        variant=args.variant,
        protocol=args.protocol,
        resume=not args.restart,
        progress=not args.quiet,
        storage_options=parse_kv(args.storage_option, "--storage-option"),
    )


def _check_run(cfg, args: argparse.Namespace) -> None:
    """Before any work: the device is there and the run folder can be written."""
    from aver.utils import check_out_dir, require_device

    require_device(cfg.device)
    check_out_dir(cfg.out, "--out" if args.out else "--runs")


def print_report(metrics: dict) -> None:
    head, test = metrics["reported_head"], metrics["test_reported"]
    scalars = {k: round(v, 4) for k, v in test.items() if isinstance(v, float)}
    if metrics.get("cross_corpus"):
        echo(
            f"cross-corpus: {metrics['clips']} clips of {metrics['dataset']} | shared classes "
            f"{metrics['shared_classes']} | not in the run: {metrics['missing_classes'] or 'none'} "
            f"({metrics['clips_left_out']} clips left out) | head {head}"
        )
        echo("all clips: " + "  ".join(f"{k} {v}" for k, v in scalars.items()))
        return
    echo(
        f"fold {metrics['fold']} | model {metrics.get('system')} | variant {metrics['variant']} | "
        f"reported head: {head} "
        f"({metrics.get('head_selection', 'best on validation')})"
    )
    echo("test: " + "  ".join(f"{k} {v}" for k, v in scalars.items()))
    if "recall" in test:
        echo("recall per class: " + "  ".join(f"{k} {v:.2f}" for k, v in test["recall"].items()))


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aver.train.api import default_out, train_fold

    cfg = _config(args, args.fold, args.out or "")
    if not args.out:
        cfg.out = str(
            Path(default_out(args.cache, cfg.variant, cfg.system, cfg.protocol, args.runs))
            / f"fold{args.fold}"
        )
    _check_run(cfg, args)
    print_report(train_fold(cfg))
    echo(f"run: {cfg.out}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    if args.protocols:
        return _cv_protocols(args)
    from aver.train.api import cross_validate, default_out
    from aver.train.sweeper import parse_folds

    cfg = _config(args, 1, args.out or "")
    if not args.out:
        cfg.out = default_out(args.cache, cfg.variant, cfg.system, cfg.protocol, args.runs)
    _check_run(cfg, args)
    folds = parse_folds(args.folds)
    summary = cross_validate(cfg, folds, seeds=args.seeds, **_engine(args))
    reported = summary["reported"]
    n = next(iter(reported.values()))["n"]
    echo(f"test metrics of the reported head over {n} runs: mean ± sample std")
    echo(f"{'metric':16} {'mean':>8} {'std':>8}")
    for k, v in reported.items():
        if k.startswith(("precision_", "recall_", "f1_")) and k not in (
            "f1_macro",
            "f1_micro",
            "precision_macro",
            "recall_macro",
        ):
            continue  # per-class values: in cv_summary.csv
        std = "-" if v["std"] is None else f"{v['std']:8.4f}"
        echo(f"{k:16} {v['mean']:8.4f} {std:>8}")
    for head, metrics in summary.items():
        if head != "reported":
            key = next(iter(k for k in ("f1_macro", "ccc_mean") if k in metrics), None)
            if key:
                std = "-" if metrics[key]["std"] is None else f"{metrics[key]['std']:.4f}"
                echo(f"{head} head: {key} {metrics[key]['mean']:.4f} ± {std}")
    echo(f"runs: {cfg.out} (cv_summary.json, .csv, .md)")
    return 0


def _engine(args: argparse.Namespace) -> dict:
    return {"workers": args.workers, "scheduler": args.scheduler, "connect_timeout": args.connect_timeout}


def cmd_sweep(args: argparse.Namespace) -> int:
    from aver.overrides import parse_kv
    from aver.train.sweeper import RunsFailed, parse_folds, parse_seeds, sweep
    from aver.utils import require_device

    from . import flag_overrides

    overrides = flag_overrides(args, {k: v for k, v in FLAG_FIELDS.items() if k != "seed"}) + list(args.set)
    names = lambda text: [x.strip() for x in text.split(",") if x.strip()] if text else None  # noqa: E731
    if args.device:
        require_device(args.device)
    doc = sweep(
        args.cache,
        system=args.model,
        variants=names(args.variants),
        table=args.table,
        folds=parse_folds(args.folds),
        seeds=parse_seeds(args.seeds),
        protocols=names(args.protocols),
        out=args.out,
        runs=args.runs,
        preset=args.preset,
        overrides=overrides,
        progress=not args.quiet,
        resume=not args.restart,
        storage_options=parse_kv(args.storage_option, "--storage-option"),
        confidence=args.confidence,
        alpha=args.alpha,
        test=args.test,
        **_engine(args),
    )
    print_sweep(doc)
    if doc["failed"]:
        raise RunsFailed(
            f"{len(doc['failed'])} of {len(doc['runs'])} runs failed (named above); the others are in "
            f"{doc['folder']}/sweep.md; the same command retries the failed runs"
        )
    return 0


def print_sweep(doc: dict) -> None:
    """The verdicts of the reported head's main metric, and each failed run with its cause."""
    from aver.train.sweep_report import primary_metric

    s, metric = doc["settings"], primary_metric(doc)
    runs = doc["runs"].values()
    done = sum(r.get("status") == "ok" for r in runs)
    kept = sum(r.get("status") == "complete" for r in runs)
    echo(f"{len(doc['runs'])} runs: {done} trained, {kept} already complete, {len(doc['failed'])} failed")
    if metric:
        echo(f"{metric} of the reported head, % (mean ± std, n) and the difference to {s['reference']}:")
        diffs = {d["arm"]: d for d in doc["differences"] if d["head"] == "reported" and d["metric"] == metric}
        for r in (r for r in doc["summary"] if r["head"] == "reported" and r["metric"] == metric):
            std = "" if r["std"] is None else f" ± {100 * r['std']:.2f}"
            line = f"  {r['arm']:24} {100 * r['mean']:6.2f}{std} (n={r['n']})"
            d = diffs.get(r["arm"])
            if d is not None:
                ci = "" if d["ci_low"] is None else f" [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]"
                line += f"  Δ {100 * d['diff']:+.2f}{ci}  {d['verdict']}"
            echo(line)
    for name, cause in doc["failed"].items():
        echo(f"FAILED {name}: {cause}")
    echo(f"sweep: {doc['folder']}/sweep.md (sweep.csv, sweep.json, sweep_forest.png)")


def _cv_protocols(args: argparse.Namespace) -> int:
    """``aver cv --protocols A,B``: one cross-validation per protocol, then their main metrics side
    by side with the difference to the first (a leaky protocol is marked)."""
    import dataclasses

    from aver.train.api import cross_validate, default_out
    from aver.train.protocols import LEAKY, PROTOCOLS

    names = [p.strip() for p in args.protocols.split(",") if p.strip()]
    for name in names:
        PROTOCOLS.check(name)
    configs = {}
    for name in names:
        cfg = configs[name] = dataclasses.replace(_config(args, 1, ""), protocol=name)
        cfg.out = (
            (args.out + (f"@{name}" if name != "cache" else ""))
            if args.out
            else default_out(args.cache, cfg.variant, cfg.system, name, args.runs)
        )
        _check_run(cfg, args)  # every run folder, before the first protocol trains
    summaries = {}
    for name, cfg in configs.items():
        summaries[name] = cross_validate(cfg, None, seeds=args.seeds, **_engine(args))["reported"]
        echo(f"{name}: runs in {cfg.out}")
    metrics = [m for m in ("accuracy", "f1_macro", "uar", "ccc_mean") if m in summaries[names[0]]]
    label = lambda n: n + (" (speaker-leaky)" if n in LEAKY else "")  # noqa: E731
    echo("| metric | " + " | ".join(label(n) for n in names) + " | difference |")
    echo("| --- |" + " --- |" * (len(names) + 1))
    for m in metrics:
        values = [summaries[n][m]["mean"] for n in names]
        cells = [f"{v:.4f} ± {summaries[n][m]['std'] or 0:.4f}" for n, v in zip(names, values, strict=True)]
        echo(f"| {m} | " + " | ".join(cells) + f" | {values[-1] - values[0]:+.4f} |")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from aver.overrides import parse_kv
    from aver.train.api import evaluate_run

    metrics = evaluate_run(args.run, args.cache, parse_kv(args.storage_option, "--storage-option") or None)
    print_report(metrics)
    echo(f"evaluation: {metrics['evaluation_dir']} (metrics.json, predictions.csv, plots)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aver.errors import UserError
    from aver.train.paper import write_report

    if not Path(args.runs).is_dir():
        raise UserError(f"{args.runs} is not a folder of runs (run `aver train` or `aver cv` first)")
    if args.out:
        from aver.utils import check_out_dir

        check_out_dir(Path(args.out).parent, f"--out {args.out}: its folder")
    path = write_report(args.runs, args.out)
    echo(f"report: {path} and {path.with_suffix('.html')}")
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    from aver.train.systems import SYSTEMS

    for name in [args.model] if args.model else list(SYSTEMS):
        system = SYSTEMS.get(name)
        echo(f"{name}: {system.summary} ({system.paper}; trains on {system.trains_on})")
        for preset in system.presets:
            train = ", ".join(f"{k}={v}" for k, v in system.presets.get(preset).train.items())
            echo(f"  preset {preset:15} {train}")
        for variant in system.variants:
            echo(f"  {variant:22} {system.describe_variant(variant)}")
    return 0
