"""`genmetrics replay [--tracking-uri URI]`: send operations spooled while a tracking server was down."""
import os


__all__ = ["add_parser", "run_replay"]


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "replay",
        help="send metrics/params/images spooled while the MLflow tracking server was unreachable",
        description="Replay, in order and exactly once, the logging operations that log_gen_metrics spooled "
                    "to $GENMETRICS_HOME/spool while the tracking server was down.",
        epilog="Exit status: 0 everything delivered; 1 something stays spooled (the server did not answer); "
               "2 operations the server rejected for good are kept in the spool's failed/ folder with the reason.",
    )
    parser.add_argument("--tracking-uri", default=None,
                        help="replay only the spool of this tracking URI (default: every spool)")
    parser.set_defaults(func=run_replay)


def run_replay(args):
    """Replay; exit 0 when everything was delivered, 1 while something stays spooled (server down: run it
    again later), 2 when operations the server rejected for good sit in ``failed/`` (read the reasons,
    then delete or fix those files)."""
    from .spool import get_sender, redact_uri, replay

    left = replay(args.tracking_uri)
    if not left:
        print("nothing spooled")
        return 0
    status = 0
    for uri, count in left.items():
        sender = get_sender(uri)
        uri = redact_uri(uri)  # credentials in a tracking URI are never printed
        if count:
            print(f"{uri}: {count} operation(s) still spooled in {sender.directory}: not delivered "
                  f"({sender.last_error}); run `genmetrics replay` again when the server is back"
                  f"{sender.credentials_hint()}")
            status = 1
        failed = sender.failed()
        if failed:
            print(f"{uri}: {len(failed)} operation(s) rejected by the server for good, kept in {sender.failed_dir} "
                  f"(not retried; delete them once handled):")
            for path, reason in failed:
                print(f"  {os.path.basename(path)}: {reason}")
            status = status or 2
        if not count and not failed:
            print(f"{uri}: all sent")
    return status
