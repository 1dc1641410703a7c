"""Shared fixtures: each fixtures_*.py module holds one kind of real test resource, loaded as a plugin."""

pytest_plugins = ["fixtures_data", "fixtures_demo", "fixtures_extractors", "fixtures_http", "fixtures_mlflow",
                  "fixtures_plugin_scoring"]

import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_once_per_process_warnings():
    """Warnings shown once per process (genmetrics.stats.messages.warn_once, scoring's skip warnings) are shown
    again in each test, and LPIPS load failures remembered by scoring are forgotten, so a test does not depend on
    which tests ran before it in the same process."""
    from genmetrics.stats.messages import forget_warnings

    forget_warnings()
    scoring = sys.modules.get("genmetrics.plugin.scoring")  # not imported yet: nothing remembered, torch not loaded
    if scoring is not None:
        scoring.clear_lpips_models()
    yield

