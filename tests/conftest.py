"""Shared fixtures: each fixtures_*.py module holds one kind of real test resource."""
from fixtures_data import *  # noqa: F401,F403
from fixtures_demo import *  # noqa: F401,F403
from fixtures_http import *  # noqa: F401,F403
from fixtures_mlflow import *  # noqa: F401,F403
