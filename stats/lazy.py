"""Lazy package exports (PEP 562): a package names what it exports and where, and loads a module on first use.

This module imports nothing heavy, so a package using it (``genmetrics.stats``, ``genmetrics.plugin``) can be
imported without torch or MLflow.
"""
import importlib

__all__ = ["lazy_exports"]


def lazy_exports(package, exports):
    """(``__all__``, ``__getattr__``, ``__dir__``) for `package` (its ``__name__``) from ``exports``, a mapping
    submodule -> names it defines; a name is imported from its submodule on first access and then kept."""
    module_of = {name: module for module, names in exports.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name):
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(module_of))

    return sorted(module_of), __getattr__, __dir__
