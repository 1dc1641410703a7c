"""Shared fixtures: each fixtures_*.py module holds one kind of real test resource, loaded as a plugin."""

pytest_plugins = ["fixtures_data", "fixtures_demo", "fixtures_http", "fixtures_mlflow", "fixtures_plugin_scoring"]
