"""The registry manifest: which reference statistics exist and where to get them.

The packaged ``manifest.yaml`` is read first, then every manifest named by ``GENMETRICS_MANIFEST``
(``os.pathsep``-separated local paths, ``file://`` or ``http(s)://`` URLs), in order; an entry with the
same ``<name>-<split>-<resolution>-<mode>@<version>`` in a later manifest replaces the earlier one.
Relative source URLs in a manifest are resolved against the manifest's own location. A remote manifest
is cached in ``$GENMETRICS_HOME/manifests/`` and that copy is used when offline or unreachable. A manifest
URL is used whole (a signed URL's token included) but named in messages and in the entries' ``manifest``
field without userinfo, query string and fragment (:func:`genmetrics.stats.download.redact_url`).

Schema (format_version 1)::

    format_version: 1
    entries:
      - name: cifar10                   # plain name: letters, digits, _ . + -
        split: train
        resolution: 32
        mode: clean                     # clean | legacy_tensorflow | legacy_pytorch
        version: 1                      # positive integer
        num_samples: 50000              # optional
        sources:                        # tried in order
          - {url: "https://host/cifar10_clean_train_32.npz", format: npz}   # npz | h5
        sha256: null                    # of the source file; null = unpinned
        provider, citation, license, description   # optional strings
"""
import dataclasses
import difflib
import hashlib
import os
import time
import urllib.parse
import urllib.request
import warnings

from genmetrics.stats.defaults import DEFAULT_MODE, MODES
from genmetrics.stats.download import redact_url
from genmetrics.stats.environment import MANIFEST

from .refs import check_name, parse_ref

__all__ = ["ManifestEntry", "Source", "load_manifests", "resolve", "UnknownRefError", "MANIFEST_ENV",
           "PACKAGED_MANIFEST", "MODES"]

MANIFEST_ENV = MANIFEST.name
PACKAGED_MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifest.yaml")
MANIFEST_FORMAT_VERSION = 1
SOURCE_FORMATS = ("npz", "h5")
_OPTIONAL_TEXT = ("provider", "citation", "license", "description")


class UnknownRefError(KeyError, ValueError):
    """No manifest entry matches a ref; the message lists close matches."""

    def __str__(self):
        return self.args[0] if self.args else ""


@dataclasses.dataclass(frozen=True)
class Source:
    """Where to download a file: `url`, its `format`, and optionally its `size` in bytes (a download that
    announces or sends more is refused)."""

    url: str
    format: str
    size: object = None


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One versioned statistics file: identity, sources (tried in order), pinned sha256 or None."""

    name: str
    split: str
    resolution: object
    mode: str
    version: int
    sources: tuple
    sha256: object = None
    num_samples: object = None
    provider: object = None
    citation: object = None
    license: object = None
    description: object = None
    manifest: str = ""

    @property
    def base(self):
        """``<name>-<split>-<resolution>``."""
        return f"{self.name}-{self.split}-{self.resolution}"

    @property
    def key(self):
        """``<name>-<split>-<resolution>-<mode>``."""
        return f"{self.base}-{self.mode}"

    @property
    def ref(self):
        """The fully pinned ref, ``<name>-<split>-<resolution>-<mode>@<version>``."""
        return f"{self.key}@{self.version}"


def _in_authority(previous, part):
    """On POSIX, whether `part` continues the authority of the URL `previous` that a ':' split: a port
    (``host:8080/...``) or a password (``user:secret@host/...``)."""
    if os.pathsep != ":" or not _is_url(previous) or urllib.parse.urlsplit(previous).path:
        return False
    return part[:1].isdigit() or "@" in part.split("/", 1)[0]


def _split_locations(text):
    """Split on os.pathsep, keeping URLs whole (on POSIX ':' also follows 'http', 'file', a user and a host)."""
    parts, out = text.split(os.pathsep), []
    for part in parts:
        glue = out and (out[-1].lower() in ("http", "https", "file") and part.startswith("//")
                        or _in_authority(out[-1], part))
        if glue:
            out[-1] += os.pathsep + part
        else:
            out.append(part)
    return [p.strip() for p in out if p.strip()]


def _manifest_locations():
    return [PACKAGED_MANIFEST] + _split_locations(MANIFEST.value())


def _is_url(text):
    return urllib.parse.urlsplit(text).scheme.lower() in ("http", "https", "file")


def _read_text(location):
    """Text of a manifest at a path or URL; remote ones are cached and the copy used when unreachable."""
    scheme = urllib.parse.urlsplit(location).scheme.lower()
    if scheme == "file":
        location = urllib.request.url2pathname(urllib.parse.urlsplit(location).path)
        scheme = ""
    if scheme not in ("http", "https"):
        path = os.path.expanduser(location)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"manifest {redact_url(location)} (from ${MANIFEST_ENV}) does not exist; fix the "
                                    f"path or remove it from ${MANIFEST_ENV}")
        with open(path, encoding="utf-8") as f:
            return f.read()
    return _read_remote(location)


MAX_REMOTE_MANIFEST_BYTES = 1 << 20  # a manifest lists URLs and hashes: 1 MiB is thousands of entries


def _read_remote(url):
    from genmetrics.stats.download import OFFLINE_ENV, genmetrics_home, offline

    cached = os.path.join(genmetrics_home(), "manifests", hashlib.sha256(url.encode()).hexdigest()[:16] + ".yaml")
    problem = f"{OFFLINE_ENV}=1" if offline() else None
    if problem is None:
        from genmetrics.stats.download import DownloadError, fetch_bytes

        try:
            text = fetch_bytes(url, max_bytes=MAX_REMOTE_MANIFEST_BYTES).decode("utf-8")
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            tmp = f"{cached}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, cached)
            return text
        except (DownloadError, UnicodeDecodeError, OSError) as error:
            problem = str(error)
    if os.path.isfile(cached):
        if not offline():
            warnings.warn(f"manifest {redact_url(url)} is unreachable ({problem}); using the cached copy {cached}",
                          stacklevel=4)
        with open(cached, encoding="utf-8") as f:
            return f.read()
    raise RuntimeError(f"cannot read manifest {redact_url(url)} ({problem}) and no cached copy exists at {cached}; "
                       f"check the URL in ${MANIFEST_ENV} or the network")


def _is_remote(text):
    return urllib.parse.urlsplit(text).scheme.lower() in ("http", "https")


def _resolve_source_url(url, location, where):
    """Relative URLs/paths in a manifest are relative to the manifest's own location.

    A remote (http/https) manifest may only name http(s) sources: relative references resolve on its
    server, while ``file://`` URLs, other schemes and absolute or ``~`` paths are refused (a server must not
    make genmetrics copy local files into the cache).
    """
    if _is_remote(location):
        if url.startswith(("/", "~", "\\")) and not url.startswith("//") or not _is_remote(
                urllib.parse.urljoin(location, url)):
            raise ValueError(f"{where}: source {redact_url(url)!r} is not an http(s) URL; a remote manifest may "
                             f"only name http(s) sources (use a local manifest for local files)")
        return urllib.parse.urljoin(location, url)
    if _is_url(url) or os.path.isabs(os.path.expanduser(url)):
        return url
    if _is_url(location):
        return urllib.parse.urljoin(location, url)
    return os.path.join(os.path.dirname(os.path.abspath(os.path.expanduser(location))), url)


def _parse_entry(raw, index, location):
    where = f"manifest {redact_url(location)}, entry {index}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping with name, split, resolution, mode, version, sources")
    missing = [k for k in ("name", "split", "resolution", "mode", "version", "sources") if raw.get(k) is None]
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    for key in ("name", "split"):
        check_name(str(raw[key]), f"{where}: {key}")
    check_name(str(raw["resolution"]), f"{where}: resolution")
    if raw["mode"] not in MODES:
        raise ValueError(f"{where}: mode {raw['mode']!r} is not one of {MODES}")
    version = raw["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{where}: version must be a positive integer, got {version!r}")
    sources = raw["sources"]
    if not isinstance(sources, list) or not sources:
        raise ValueError(f"{where}: sources must be a non-empty list of {{url: ..., format: npz|h5}}")
    parsed = []
    for source in sources:
        if not isinstance(source, dict) or not isinstance(source.get("url"), str):
            raise ValueError(f"{where}: each source needs a url string, got {source!r}")
        fmt = source.get("format") or ("h5" if source["url"].lower().endswith((".h5", ".hdf5")) else "npz")
        if fmt not in SOURCE_FORMATS:
            raise ValueError(f"{where}: source format {fmt!r} is not one of {SOURCE_FORMATS}")
        size = source.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise ValueError(f"{where}: source size must be a positive number of bytes, got {size!r}")
        parsed.append(Source(_resolve_source_url(source["url"], location, where), fmt, size))
    sha256 = raw.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or len(sha256) != 64
                               or any(c not in "0123456789abcdefABCDEF" for c in sha256)):
        raise ValueError(f"{where}: sha256 must be 64 hex digits or null, got {sha256!r}")
    num_samples = raw.get("num_samples")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < 0):
        raise ValueError(f"{where}: num_samples must be a non-negative integer, got {num_samples!r}")
    extra = {k: (None if raw.get(k) is None else str(raw[k])) for k in _OPTIONAL_TEXT}
    resolution = raw["resolution"]
    return ManifestEntry(name=str(raw["name"]), split=str(raw["split"]), resolution=resolution, mode=raw["mode"],
                         version=version, sources=tuple(parsed), sha256=sha256.lower() if sha256 else None,
                         num_samples=num_samples, manifest=redact_url(location), **extra)


def _refuse_aliases(text, location, loader):
    """Refuse YAML anchors and aliases (``&a`` / ``*a``) before anything is built: nested aliases expand a
    small file exponentially ("billion laughs"). One pass over the parser's events, linear in the text."""
    import yaml

    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ValueError(f"manifest {location} uses YAML anchors or aliases (&name / *name), which manifests "
                             f"may not (a few lines can expand to gigabytes); write each entry out in full")


def _parse_manifest(text, location):
    import yaml

    shown = redact_url(location)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        _refuse_aliases(text, shown, loader)
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as error:
        raise ValueError(f"manifest {shown} is not valid YAML: {error}") from error
    if not isinstance(data, dict) or "entries" not in data:
        raise ValueError(f"manifest {shown} must be a mapping with format_version and entries")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"manifest {shown}: format_version must be an integer, got {version!r}")
    if version > MANIFEST_FORMAT_VERSION:
        raise ValueError(f"manifest {shown} has format_version {version}, newer than this genmetrics reads "
                         f"({MANIFEST_FORMAT_VERSION}); upgrade mlflow-genmetrics")
    return [_parse_entry(raw, i, location) for i, raw in enumerate(data["entries"] or [])]


_PARSED = {}
#: Seconds a remote manifest fetched by this process is reused before it is fetched again (a training loop
#: that loads a ref at every evaluation does not request the manifest each time).
REMOTE_MANIFEST_TTL = 300.0


def _entries_of(location):
    """Entries of one manifest; local files are re-read only when their modification time changes, remote ones
    after :data:`REMOTE_MANIFEST_TTL` seconds."""
    local = not _is_url(location) or urllib.parse.urlsplit(location).scheme.lower() == "file"
    if local:
        path = location
        if urllib.parse.urlsplit(location).scheme.lower() == "file":
            path = urllib.request.url2pathname(urllib.parse.urlsplit(location).path)
        try:
            stamp = os.stat(os.path.expanduser(path)).st_mtime_ns
        except OSError:
            stamp = None
        if stamp is not None and _PARSED.get(location, (None,))[0] == stamp:
            return _PARSED[location][1]
        entries = _parse_manifest(_read_text(location), location)
        _PARSED[location] = (stamp, entries)
        return entries
    fetched_at, entries = _PARSED.get(location, (None, None))
    if isinstance(fetched_at, float) and time.monotonic() - fetched_at < REMOTE_MANIFEST_TTL:
        return entries
    entries = _parse_manifest(_read_text(location), location)
    _PARSED[location] = (time.monotonic(), entries)
    return entries


def load_manifests():
    """All entries (packaged manifest, then $GENMETRICS_MANIFEST in order; later ones override)."""
    by_ref = {}
    for location in _manifest_locations():
        for entry in _entries_of(location):
            by_ref[entry.ref] = entry
    return list(by_ref.values())


def resolve(ref, entries=None):
    """The manifest entry a ref names (see :mod:`genmetrics.registry.refs`); UnknownRefError otherwise."""
    parsed = parse_ref(ref)
    entries = load_manifests() if entries is None else entries
    matches = [e for e in entries if e.key == parsed.base]
    if not matches:
        same_base = [e for e in entries if e.base == parsed.base]
        modes = sorted({e.mode for e in same_base})
        if DEFAULT_MODE in modes:
            matches = [e for e in same_base if e.mode == DEFAULT_MODE]
        elif len(modes) == 1:
            matches = same_base
        elif modes:
            raise UnknownRefError(f"ref {ref!r} exists in several preprocessing modes {modes} and none is "
                                  f"'{DEFAULT_MODE}'; name one, e.g. '{parsed.base}-{modes[0]}'")
    if parsed.version is not None:
        versions = sorted(e.version for e in matches)
        matches = [e for e in matches if e.version == parsed.version]
        if not matches and versions:
            raise UnknownRefError(f"ref {ref!r}: no version {parsed.version}; known versions: {versions}")
    if not matches:
        raise UnknownRefError(_unknown_message(ref, parsed.base, entries))
    return max(matches, key=lambda e: e.version)


def _unknown_message(ref, base, entries):
    names = sorted({e.base for e in entries} | {e.key for e in entries})
    close = difflib.get_close_matches(base, names, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (f"unknown registry ref {ref!r}.{hint} `genmetrics stats list` shows all entries; add your own with "
            f"a manifest named by ${MANIFEST_ENV}")
