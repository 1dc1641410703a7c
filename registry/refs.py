"""Reference names ("refs") of registry entries.

An entry is identified by ``<name>-<split>-<resolution>-<mode>@<version>``, e.g.
``cifar10-train-32-clean@1``. Shorter refs leave parts to defaults:

- ``cifar10-train-32``        -> mode ``clean`` (or the only mode the entry exists in), newest version;
- ``cifar10-train-32@1``      -> mode default, version 1;
- ``cifar10-train-32-legacy_tensorflow`` -> that mode, newest version.

Refs are names, never paths: separators (``/``, ``\\``), ``..``, whitespace and control characters are
rejected, so a ref can safely become a file name in the cache.
"""
import re

__all__ = ["Ref", "parse_ref", "check_name"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def check_name(text, what="ref"):
    """`text` must be a plain name (letters, digits, ``_ . + -``; no separators, no ``..``)."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    if "/" in text or "\\" in text or ".." in text:
        raise ValueError(f"{what} {text!r} looks like a path (it contains '/', '\\\\' or '..'); registry "
                         f"names are plain names such as 'cifar10-train-32'. To use a file, pass an existing "
                         f".h5/.npz path")
    if not _NAME.match(text):
        raise ValueError(f"{what} {text!r} is not a valid name: use letters, digits and '_', '.', '+', '-' "
                         f"(starting with a letter or digit), e.g. 'cifar10-train-32-clean@1'")
    return text


class Ref:
    """A parsed ref: ``base`` (everything before ``@``) and ``version`` (int or None = newest)."""

    def __init__(self, base, version):
        self.base = base
        self.version = version

    def __str__(self):
        return self.base if self.version is None else f"{self.base}@{self.version}"

    def __repr__(self):
        return f"Ref({str(self)!r})"


def parse_ref(text):
    """'cifar10-train-32-clean@1' -> Ref('cifar10-train-32-clean', 1); validates the characters."""
    if not isinstance(text, str):
        raise TypeError(f"a registry ref must be a string such as 'cifar10-train-32', got {type(text).__name__}")
    base, sep, version = text.strip().partition("@")
    check_name(base)
    if not sep:
        return Ref(base, None)
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"ref {text!r}: the version after '@' must be a positive integer, e.g. "
                         f"'{base}@1'")
    return Ref(base, int(version))
