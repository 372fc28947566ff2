"""`imgcls`: one command for the pipeline, its schedule, prediction, serving and the registry.

    imgcls run [--params P] [--force]          the whole pipeline as a Prefect flow
               [--params-override FILE]        ... with FILE's sections merged over params.yaml (never edited)
    imgcls tune [--params P]                   hyperparameter search over train.* (docs/tuning.md)
    imgcls ensemble --seeds N | --runs ID ...  an ensemble of CNNs as the candidate model (docs/ensembles.md)
                    [--baseline]               ... with the HOG baseline as one more member
    imgcls schedule --cron "0 3 * * *"        serve the flow on a cron schedule
    imgcls stage NAME [--params P]             one stage, as `python -m tasks.NAME`
    imgcls predict PATH... [--out CSV]         batch prediction to a CSV
    imgcls serve [--host H --port N]           HTTP prediction + feedback server
    imgcls promote --version N --reason TEXT   manual promotion to champion
    imgcls rollback [--reason TEXT]            champion <- previous
    imgcls export --format onnx [--model URI] [--out FILE]   ONNX file, parity-checked on the test split
    imgcls drift [--window N --threshold T]    served inputs vs the training set (exit 3: retrain recommended)
    imgcls review [list | decide SHA ... | apply-csv F | export | import]   human label decisions (docs/review.md)
    imgcls review group [--folder D] [--next N] [--model URI] | accept-group G [--label X]   unlabelled images

A ParamsError or UserError prints one line `error: ...` and exits 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tasks.common.errors import UserError
from tasks.common.params import DEFAULT_PARAMS, ParamsError, Paths, parse_section, read_yaml, validate_file
from tasks.stages import STAGES

DEFAULT_DEPLOYMENT = "imgcls-scheduled"


def _paths(params_path: str) -> Paths:
    return parse_section(read_yaml(params_path), "paths", Paths, params_path)


def _model_name(args) -> str:
    if getattr(args, "model_name", None):
        return args.model_name
    from tasks.promote import Params as PromoteParams

    return parse_section(read_yaml(args.params), "promote", PromoteParams, args.params).model_name


def _model_uri(args) -> str:
    """--model, else the champion of promote.model_name from params."""
    if args.model:
        return args.model
    from tasks.judging.registry import CHAMPION

    return f"models:/{_model_name(args)}@{CHAMPION}"


def _max_pixels(args) -> int:
    """--max-pixels, else clean.max_pixels from params: the server refuses what clean would."""
    if args.max_pixels is not None:
        return args.max_pixels
    from tasks.clean import Params as CleanParams

    return parse_section(read_yaml(args.params), "clean", CleanParams, args.params).max_pixels


def checked_params(params_path) -> dict:
    """The whole params file checked, `tune:` included: bad params are one line before anything starts."""
    from tasks.tuning.space import check_section

    data = validate_file(params_path)
    check_section(data, params_path)
    return data


def cmd_run(args) -> int:
    checked_params(args.params)  # bad params: one line before Prefect starts anything
    if getattr(args, "params_override", None):  # a bad override: one line before Prefect starts anything
        from tasks.common.params import merge_override

        merge_override(args.params, args.params_override, _paths(args.params).cache)
    from flows.pipeline import imgcls_pipeline

    if not os.environ.get("PREFECT_API_URL") and not _profile_api_url():
        home = os.environ.get("PREFECT_HOME", "~/.prefect")
        print(
            f"PREFECT_API_URL is not set: running on a temporary local Prefect API, runs kept in {home} "
            f"(to browse them: PREFECT_HOME={home} prefect server start)",
            file=sys.stderr,
        )
    if getattr(args, "cluster", None):
        from tasks.common import engine

        os.environ[engine.ADDRESS_ENV] = args.cluster  # engine.current() reads it, in this process and its tasks
        engine.current()  # a malformed address: one line now
    summary = imgcls_pipeline(
        params_path=args.params,
        force=args.force,
        retrain_on_drift=args.retrain_on_drift,
        params_override=getattr(args, "params_override", None),
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_tune(args) -> int:
    import logging

    from flows.tune import summary_lines, tune

    logging.basicConfig(level=logging.INFO, format="[tune] %(message)s")
    summary = tune(args.params)
    print("\n".join(summary_lines(summary)))
    return 0


def cmd_ensemble(args) -> int:
    import logging

    from flows.ensemble import make, summary_lines

    logging.basicConfig(level=logging.INFO, format="[ensemble] %(message)s")
    print(
        "\n".join(
            summary_lines(
                make(args.params, seeds=args.seeds, runs=args.runs, weighting=args.weights, baseline=args.baseline)
            )
        )
    )
    return 0


def cmd_schedule(args) -> int:
    checked_params(args.params)
    if not os.environ.get("PREFECT_API_URL"):
        # Prefect's temporary API has no scheduler: the cron would never fire
        raise UserError(
            "schedule needs a running Prefect server: start `prefect server start` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`, then run this again"
        )
    from flows.pipeline import imgcls_pipeline

    # the served process runs the flow in its own working directory: pin the params file absolutely
    imgcls_pipeline.serve(
        name=args.name,
        cron=args.cron,
        parameters={
            "params_path": str(Path(args.params).resolve()),
            "force": False,
            "retrain_on_drift": args.retrain_on_drift,
        },
    )
    return 0


def cmd_stage(args) -> int:
    from tasks.common.entry import stage_main

    return stage_main(args.name, STAGES[args.name].run, ["--params", args.params])


def cmd_predict(args) -> int:
    from flows.predict import expand_inputs, load_model, predict_paths, write_predictions

    inputs = expand_inputs(args.paths)
    model = load_model(_model_uri(args))
    out = predict_paths(model, inputs, batch_size=args.batch_size)
    write_predictions(out, args.out)
    failed = int((out["error"] != "").sum())
    print(f"{len(out)} images, {failed} could not be predicted -> {args.out}")
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from flows.drift import default_log_dir
    from flows.guards import TOKEN_ENV, load_tokens
    from flows.serve import create_app

    tokens = load_tokens(args.token_file)
    if not tokens:
        print(f"no feedback token ({TOKEN_ENV} or --token-file): POST /feedback answers 403", file=sys.stderr)
    paths = _paths(args.params)
    input_log = None if args.no_input_log else (args.input_log or default_log_dir(paths))
    app = create_app(
        _model_uri(args),
        args.feedback_dir or paths.feedback,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=_max_pixels(args),
        tokens=tokens,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        allow_new_labels=args.allow_new_labels,
        input_log=input_log,
    )
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


def cmd_export(args) -> int:
    from flows.export import export, parity_path

    report = export(_model_uri(args), args.out, _paths(args.params).prepared, fmt=args.format, max_diff=args.max_diff)
    print(
        f"{args.out}: ONNX matches PyTorch on {report['images']} test images "
        f"(max |probability difference| {report['max_abs_diff']:.2g}, labels agree {report['label_agreement']:.0%})"
        f" -> {parity_path(args.out)}"
    )
    return 0


def cmd_promote(args) -> int:
    from tasks.promote import promote_version

    # the same lock file as the flow's promote stage, so a manual move cannot race an automatic one
    result = promote_version(
        _model_name(args), args.version, args.reason, cache=_paths(args.params).cache, new_task=args.new_task
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_rollback(args) -> int:
    from tasks.promote import rollback

    result = rollback(_model_name(args), args.reason, cache=_paths(args.params).cache)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_drift(args) -> int:
    from flows.drift import DRIFT_EXIT, check_drift, should_retrain, summary_lines

    report = check_drift(
        _paths(args.params), window=args.window, threshold=args.threshold, alpha=args.alpha, log_dir=args.log_dir
    )
    print("\n".join(summary_lines(report)))
    return DRIFT_EXIT if should_retrain(report) else 0


def cmd_review(args) -> int:
    from flows import review
    from tasks.common.label_decisions import describe

    ctx = review.Context.load(args.params)
    action = getattr(args, "review_action", None) or "list"
    if action == "list":
        queue = review.build(ctx, args.feedback_min_confidence)
        counts = ", ".join(f"{reason} {n}" for reason, n in queue["reason"].value_counts().items())
        what = f" ({counts})" if counts else ""
        print(f"{len(queue)} image(s) await review{what} -> {ctx.queue_dir()}/queue.csv, queue.html")
        return 0
    if action == "export":
        n, config = review.export_label_studio(
            ctx, args.out, args.image_prefix, args.image_root, args.feedback_min_confidence
        )
        print(f"{n} Label Studio task(s) -> {args.out}; labeling interface -> {config}")
        return 0
    if action == "group":
        return _review_group(review, ctx, args)
    if action == "decide":
        decision = "keep" if args.keep else "exclude" if args.exclude else "relabel"
        done = [review.decide(ctx, args.sha256, decision, args.relabel or "", args.note, args.user)]
    elif action == "apply-csv":
        done = review.apply_csv(ctx, args.file, args.user)
    elif action == "accept-group":
        done = review.accept_group(ctx, args.group, args.label, args.note, args.user)
    else:  # import
        done, unannotated = review.import_label_studio(ctx, args.file, args.user)
        if unannotated:
            print(f"{unannotated} task(s) without an annotation left as they are")
    for d in done[:20]:
        print(f"{d.sha256[:12]}: {describe(d)}")
    print(f"{len(done)} decision(s) recorded in {ctx.paths.label_decisions}; the next ingest applies them")
    return 0


def _review_group(review, ctx, args) -> int:
    result = review.group_unlabelled(ctx, args.folder, args.next, args.model, args.seed)
    groups = result.groups
    bad = int((groups["error"] != "").sum())
    chose = f"k={result.k} by silhouette" if result.silhouettes else f"{result.k} group(s)"
    print(
        f"{len(groups) - bad} unlabelled image(s) in {chose} ({result.embedder} embedding, proposals: "
        f"{result.proposer}); {len(result.next_to_label)} picked to label next; {bad} not read"
    )
    for g, members in groups[groups["error"] == ""].groupby("group"):
        first = members.iloc[0]
        proposal = f"{first['proposed_label']} ({first['confidence']:.2f})" if first["proposed_label"] else "-"
        print(f"  group {int(g)}: {len(members)} image(s), proposed {proposal}")
    print(f"-> {ctx.unlabelled_dir()}/groups.csv, groups.html, next_to_label.csv; queue: {ctx.queue_dir()}/queue.csv")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description="declarative image-classification pipeline")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default params.yaml)")
        p.set_defaults(func=func)
        return p

    p = command("run", cmd_run, "run the whole pipeline as a Prefect flow")
    p.add_argument("--force", action="store_true", help="retrain even when the data has not changed")
    p.add_argument(
        "--cluster",
        default=None,
        metavar="tcp://HOST:8786",
        help="Dask scheduler for the per-image work (overrides engine.address; docs/scaling.md)",
    )
    p.add_argument(
        "--params-override",
        default=None,
        metavar="FILE",
        help="a params file whose sections are merged over --params for this run, e.g. "
        "reports/tune/best_params.yaml from `imgcls tune` (--params itself is not changed)",
    )

    command("tune", cmd_tune, "hyperparameter search over train.* (tune: in params.yaml; docs/tuning.md)")

    p = command(
        "ensemble",
        cmd_ensemble,
        "make an ensemble of CNNs (and the HOG baseline) the candidate for evaluate/promote (docs/ensembles.md)",
    )
    members = p.add_mutually_exclusive_group(required=True)
    members.add_argument("--seeds", type=int, metavar="N", help="train N members with train.seed = 0..N-1")
    members.add_argument("--runs", nargs="+", metavar="RUN_ID", help="use the models these MLflow runs logged")
    p.add_argument(
        "--weights",
        choices=("auto", "fitted", "equal"),
        default="auto",
        help="fitted: minimum val log loss; equal; auto (default): fitted only when val tells the members "
        "apart (exact McNemar p < 0.05), else equal",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="add evaluate's HOG baseline (evaluate.baseline: hog_svm or logreg) as one more member, fitted on "
        "the train split and shipped as arrays",
    )

    p = command(
        "schedule", cmd_schedule, "serve the pipeline flow on a cron schedule (needs PREFECT_API_URL for the UI)"
    )
    p.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * *"')
    p.add_argument("--name", default=DEFAULT_DEPLOYMENT, help=f"deployment name (default {DEFAULT_DEPLOYMENT})")
    for flow_command in (sub.choices["run"], p):
        flow_command.add_argument(
            "--retrain-on-drift",
            action="store_true",
            help="retrain when the served inputs drifted from the training set (imgcls drift)",
        )

    p = command("stage", cmd_stage, "run one stage, as `python -m tasks.NAME`")
    p.add_argument("name", choices=list(STAGES))

    p = command("predict", cmd_predict, "predict files, folders and globs into a CSV")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument(
        "--model", default=None, help="MLflow model URI or folder (default: the champion of promote.model_name)"
    )
    p.add_argument("--out", default="predictions.csv", help="CSV written atomically (default predictions.csv)")
    p.add_argument("--batch-size", type=int, default=64)

    p = command("serve", cmd_serve, "HTTP server: POST /predict, POST /feedback, GET /health, GET /metrics")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="MLflow model URI (default: the champion of promote.model_name)")
    p.add_argument(
        "--feedback-dir",
        default=None,
        help="quarantine that feedback goes to (default: paths.feedback from params; ingest admits it)",
    )
    p.add_argument(
        "--token-file",
        default=None,
        help="bearer tokens allowed to POST /feedback, one per line, mode 600 (default: $IMGCLS_FEEDBACK_TOKEN; "
        "none: feedback is refused)",
    )
    p.add_argument("--rate-limit", type=float, default=20.0, help="requests per second per client address (0: off)")
    p.add_argument("--rate-burst", type=int, default=40, help="requests a client may send at once")
    p.add_argument(
        "--allow-new-labels",
        action="store_true",
        help="accept feedback labels that are not classes of the served model",
    )
    p.add_argument("--max-upload-mb", type=float, default=10.0)
    p.add_argument("--max-pixels", type=int, default=None, help="default: clean.max_pixels from params")
    p.add_argument(
        "--input-log",
        default=None,
        help="where scored inputs are recorded for `imgcls drift` (default: paths.reports/serve/inputs)",
    )
    p.add_argument("--no-input-log", action="store_true", help="do not record scored inputs (no drift watch)")

    from flows.export import DEFAULT_OUT, FORMATS

    p = command("export", cmd_export, "export a model to ONNX, checked against PyTorch on the test split")
    p.add_argument("--format", default="onnx", choices=FORMATS)
    p.add_argument(
        "--model", default=None, help="MLflow model URI or folder (default: the champion of promote.model_name)"
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"the exported file (default {DEFAULT_OUT})")
    p.add_argument(
        "--max-diff",
        type=float,
        default=None,
        help="largest |probability difference| from PyTorch accepted (default 1e-4)",
    )

    for name, func, help_ in (
        ("promote", cmd_promote, "make a registered version the champion by hand"),
        ("rollback", cmd_rollback, "give the champion alias back to the previous model"),
    ):
        p = command(name, func, help_)
        p.add_argument("--model-name", default=None, help="registered model (default: promote.model_name from params)")
        if name == "promote":
            p.add_argument("--version", required=True, type=int, help="registered model version")
            p.add_argument(
                "--new-task",
                action="store_true",
                help="confirm that the version predicts another label set than the champion",
            )
        p.add_argument("--reason", required=name == "promote", default="", help="why, recorded in the registry")

    p = command(
        "drift", cmd_drift, "compare the last served inputs with the training set (exit 3: retrain recommended)"
    )
    p.add_argument("--window", type=int, default=500, help="how many of the latest served inputs (default 500)")
    p.add_argument(
        "--threshold", type=float, default=0.2, help="PSI at or above which a statistic has drifted (default 0.2)"
    )
    p.add_argument("--alpha", type=float, default=0.01, help="significance of the thumbnail MMD test (default 0.01)")
    p.add_argument("--log-dir", default=None, help="served-input log (default: paths.reports/serve/inputs)")

    # imgcls review [list | decide | apply-csv | export | import] (flows/review.py, docs/review.md)
    p = command("review", cmd_review, "review flagged images and record label decisions (default: list)")
    p.add_argument("--feedback-min-confidence", type=float, default=0.5, help=argparse.SUPPRESS)
    actions = p.add_subparsers(dest="review_action", metavar="ACTION")

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help_, description=help_)
        a.add_argument("--params", default=argparse.SUPPRESS, help="params file (default params.yaml)")
        return a

    for name, help_ in (
        ("list", "write reports/review/queue.csv and queue.html: what awaits a decision"),
        ("export", "write the queue as Label Studio tasks with the model's suggestion as pre-annotation"),
    ):
        a = action(name, help_)
        a.add_argument(
            "--feedback-min-confidence",
            type=float,
            default=argparse.SUPPRESS,
            help="admitted feedback whose label the out-of-fold models give less than this is queued (default 0.5)",
        )
        if name == "export":
            a.add_argument("--format", choices=["label-studio"], default="label-studio")
            a.add_argument("out", metavar="OUT.json")
            a.add_argument(
                "--image-prefix",
                default="/data/local-files/?d=",
                help="put before each image's path (default: Label Studio's local file serving)",
            )
            a.add_argument("--image-root", default=".", help="image paths are relative to this folder (default .)")
    user_help = "who decides (default: $IMGCLS_USER or the login name)"
    a = action("decide", "record one decision: --keep, --relabel LABEL or --exclude")
    a.add_argument("--user", default=None, help=user_help)
    a.add_argument("sha256", help="the image's SHA-256 (or a unique prefix of at least 8 characters)")
    what = a.add_mutually_exclusive_group(required=True)
    what.add_argument("--keep", action="store_true", help="the given label is right")
    what.add_argument("--relabel", metavar="LABEL", help="the image's label becomes LABEL (a known class)")
    what.add_argument("--exclude", action="store_true", help="leave the image out of the data")
    a.add_argument("--note", default="", help="why, recorded with the decision")
    a = action("apply-csv", "record the decisions of a CSV with sha256, decision, label columns (e.g. queue.csv)")
    a.add_argument("file", metavar="FILE")
    a.add_argument("--user", default=None, help=user_help)
    a = action("group", "group the unlabelled images, propose a label per group, pick the next N to label")
    a.add_argument("--folder", default=None, help="the unlabelled images (default: ingest.unlabelled)")
    a.add_argument("--next", type=int, default=20, help="how many images to pick for labelling (default 20)")
    a.add_argument("--model", default=None, help="embed with this model (models:/NAME@champion, a folder, ...)")
    a.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = action("accept-group", "relabel every member of a group to its proposed label (or --label)")
    a.add_argument("group", type=int, metavar="G")
    a.add_argument("--label", default=None, help="the label instead of the proposed one")
    a.add_argument("--note", default="", help="why, recorded with the decisions")
    a.add_argument("--user", default=None, help=user_help)
    a = action("import", "record the annotations of a Label Studio JSON export")
    a.add_argument("--format", choices=["label-studio"], default="label-studio")
    a.add_argument("file", metavar="EXPORTED.json")
    a.add_argument("--user", default=None, help=user_help)
    return parser


PREFECT_HOME_DIR = Path(".imgcls") / "prefect"  # under the project root (gitignored with .imgcls/)
# Each only where the user has not set it. Telemetry: Prefect's server heartbeat (which also fails with
# "database is locked" tracebacks on a busy sqlite file) and SDK events, MLflow's usage events
# (both SDKs honour DO_NOT_TRACK=true). A first run creates Prefect's database, which on a busy
# machine takes longer than Prefect's 20 s wait for its temporary server. MLflow's "Downloading
# artifacts" bars are for remote stores: here they are noise around local copies of a few files.
QUIET_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def _profile_api_url() -> bool:
    """Whether the active profile of the user's Prefect home (~/.prefect/profiles.toml) points at a server."""
    import tomllib

    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(profiles.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    return bool((data.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL"))


def quiet_defaults(root: Path | None = None) -> dict[str, str]:
    """Process-wide defaults for a quiet, self-contained run, set before Prefect or MLflow is imported;
    returns what it set. Besides QUIET_DEFAULTS: with no PREFECT_HOME and no Prefect server configured
    (PREFECT_API_URL, or one in the user's active profile) Prefect's home, and so the temporary API's
    database, is <project>/.imgcls/prefect: every project keeps its own flow runs, none waits on
    another's sqlite file."""
    wanted = dict(QUIET_DEFAULTS)
    if not os.environ.get("PREFECT_HOME") and not os.environ.get("PREFECT_API_URL") and not _profile_api_url():
        wanted["PREFECT_HOME"] = str((root or Path.cwd()).resolve() / PREFECT_HOME_DIR)
    set_now = {k: v for k, v in wanted.items() if k not in os.environ}
    if "PREFECT_HOME" in set_now:  # Prefect makes its home without parents: a fresh project has no .imgcls/
        Path(set_now["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.update(set_now)
    return set_now


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_defaults()
    try:
        return args.func(args)
    except (ParamsError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
