"""The demo's procedural data as test resources: a tiny reference `.h5`, and one quick demo run.

`tiny_reference`: reference statistics (with features, for KID) of 12 procedurally generated 32 px
images, built with the offline FID Inception weights; small, so FID values are noisy but real.
`demo_run`: `genmetrics demo --quick` run once per session through the CLI against the real
`mlflow_server`; the demo and UI tests read the run it logged.
"""
import contextlib
import io
import os

import pytest

__all__ = ["tiny_reference", "demo_run", "DemoRun"]


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory, inception):
    from genmetrics.plugin.demo import build_reference

    return build_reference(str(tmp_path_factory.mktemp("tiny-reference")), count=12, size=32, seed=5, model=inception)


class DemoRun:
    """What `genmetrics demo --quick` printed and logged: `.output`, `.experiment_id`, `.run_id`."""

    def __init__(self, output, experiment_id, run_id, tracking_uri):
        self.output = output
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.tracking_uri = tracking_uri


@pytest.fixture(scope="session")
def demo_run(mlflow_server, tmp_path_factory, fid_weights_path):
    from mlflow.tracking import MlflowClient

    from genmetrics.plugin.cli import main
    from genmetrics.plugin.demo import EXPERIMENT_NAME

    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["demo", "--quick", "--tracking-uri", mlflow_server.uri, "--out", str(out)])
    assert status == 0, printed.getvalue()
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    assert os.path.isfile(os.path.join(str(out), "reference.h5"))
    return DemoRun(printed.getvalue(), experiment.experiment_id, runs[0].info.run_id, mlflow_server.uri)
