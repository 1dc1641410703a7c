"""The dependency direction plugin -> registry -> stats holds at import time, and the shared names load fast."""
import subprocess
import sys

import pytest


def _modules_after(statement):
    code = f"import sys; {statement}; print(','.join(sorted(m for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.strip().split(","))


@pytest.mark.parametrize("statement", ["import genmetrics.stats", "from genmetrics.stats import extract_features, "
                                       "FeatureAccumulator, frechet_distance, ssim, LPIPS"])
def test_stats_loads_neither_mlflow_nor_the_other_parts(statement):
    loaded = _modules_after(statement)
    assert not {m for m in loaded if m == "mlflow" or m.startswith("mlflow.")}
    assert not {m for m in loaded if m.startswith(("genmetrics.registry", "genmetrics.plugin"))}


def test_registry_loads_no_mlflow_and_no_plugin():
    loaded = _modules_after("import genmetrics.registry; genmetrics.registry.load")
    assert not {m for m in loaded if m == "mlflow" or m.startswith("mlflow.")}
    assert not {m for m in loaded if m.startswith("genmetrics.plugin")}


@pytest.mark.parametrize("statement", ["import genmetrics.registry", "import genmetrics.plugin",
                                       "from genmetrics.plugin.cli import main; main(['stats', 'list'])",
                                       "from genmetrics.stats.metric_table import METRICS"])
def test_the_registry_the_plugin_and_the_listings_load_no_torch(statement):
    """Listing or fetching references, the plugin package and the metric table need no torch (its import costs
    seconds on a busy machine), nor Lightning (an optional extra: only genmetrics.plugin.lightning imports it)."""
    loaded = _modules_after(statement)
    assert "torch" not in loaded and "torchvision" not in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric")}


def test_shared_names_load_without_torch():
    loaded = _modules_after("from genmetrics.stats.defaults import MODES, DEFAULT_METRICS")
    assert "torch" not in loaded and "numpy" not in loaded


def test_function_names_win_over_their_submodules():
    """`genmetrics.stats.ssim` (and prdc, ...) is the function even after its module `genmetrics.stats.metrics.ssim` was imported."""
    import genmetrics.stats.metrics.diversity  # noqa: F401  (imports the submodules ssim and lpips)
    from genmetrics import stats

    for name in ("ssim", "prdc", "fid_infinity", "inception_score"):
        assert callable(getattr(stats, name)) and not isinstance(getattr(stats, name), type(sys))


def test_every_public_module_declares_all():
    import importlib
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    missing = []
    for part in ("stats", "registry", "plugin"):
        for path in sorted((root / part).rglob("*.py")):
            dotted = ".".join(path.relative_to(root / part).with_suffix("").parts)
            name = f"genmetrics.{part}" + ("" if dotted == "__init__" else f".{dotted.removesuffix('.__init__')}")
            if not hasattr(importlib.import_module(name), "__all__"):
                missing.append(name)
    assert not missing, f"modules without __all__: {missing}"


def test_the_development_page_maps_every_module():
    """docs/development.md's layout names every module under its own folder, so the map cannot drift from the tree."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    text = (root / "docs" / "development.md").read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):text.index("## Tests")]
    named, folder = {}, None
    for line in layout.splitlines():
        heading = re.match(r"^(\w+)/|^  (\w+)/", line)
        if heading:
            folder = heading.group(1) or f"{folder.split('/')[0]}/{heading.group(2)}"
        if folder:
            named.setdefault(folder, set()).update(re.findall(r"[a-z_0-9]+\.(?:py|yaml)", line))
    missing = [str(path.relative_to(root)) for part in ("stats", "registry", "plugin")
               for path in sorted((root / part).rglob("*.py"))
               if path.name != "__init__.py" and path.name not in named.get(str(path.parent.relative_to(root)), ())]
    assert not missing, f"docs/development.md's layout does not name {missing} under their folders"




def test_every_function_is_under_80_lines():
    """The style rule of the design step (issue 20): no function of stats/, registry/ or plugin/ over 80 lines."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    long = [f"{path.relative_to(root)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for part in ("stats", "registry", "plugin") for path in sorted((root / part).rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 >= 80]
    assert not long, f"functions over 80 lines: {long}"
