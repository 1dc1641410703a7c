"""`genmetrics replay [--tracking-uri URI]`: send operations spooled while a tracking server was down."""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "replay",
        help="send metrics/params/images spooled while the MLflow tracking server was unreachable",
        description="Replay, in order and exactly once, the logging operations that log_gen_metrics spooled "
                    "to $GENMETRICS_HOME/spool while the tracking server was down.",
    )
    parser.add_argument("--tracking-uri", default=None,
                        help="replay only the spool of this tracking URI (default: every spool)")
    parser.set_defaults(func=run_replay)


def run_replay(args):
    from .spool import replay

    left = replay(args.tracking_uri)
    if not left:
        print("nothing spooled")
        return 0
    for uri, count in left.items():
        print(f"{uri}: {'all sent' if count == 0 else f'{count} operation(s) still spooled (server unreachable?)'}")
    return 1 if any(left.values()) else 0
