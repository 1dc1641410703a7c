"""Fetch registry entries into the cache, load statistics, verify and describe them.

Cache layout under ``<cache root>/stats/`` (:func:`genmetrics.stats.environment.cache_root`: ``$GENMETRICS_HOME``,
else the platform's cache folder; ``~/.cache/genmetrics/stats`` on Linux by default):

- ``<name>-<split>-<resolution>-<mode>@<version>.h5``: the statistics (format v1), what `load` reads;
- ``sources/<ref>/source-<k>.<format>``: the file downloaded from the entry's k-th source (an ``.npz``
  source is kept so that `verify` can re-check its hash and an offline machine can convert it). Every name
  in the cache is made from the entry's ref (a checked plain name) and the source's position and format,
  never from the URL;
- ``<ref>.h5.sha256``: the hash of the .h5 as fetch wrote it (`verify` detects later damage, and
  :func:`verified_entry` accepts the file as the entry only while its bytes still have this hash);
- ``<ref>.source.sha256``: for unpinned entries (``sha256: null``), the source's hash recorded on the first
  fetch; a later download with another hash is refused.

URLs are stored (the ``source`` and ``manifest`` attributes, the ``.source.sha256`` record) and printed
without userinfo, query string and fragment (:func:`genmetrics.stats.download.redact_url`): a signed URL's
token is used for the download only.

Every step holds a file lock (``<ref>.h5.lock``), so concurrent processes fetch and convert once; all files
appear by atomic rename. With ``GENMETRICS_OFFLINE=1`` only the cache is used.
"""
import json
import os

from genmetrics.stats.download import (ChecksumMismatchError, DownloadError, NetworkUnavailableError, OfflineError,
                                       cached_file_sha256, download, file_sha256, genmetrics_home, offline,
                                       redact_url, writable_dir)

from .manifest import load_manifests, resolve
from .npz_import import read_npz
from .refstats import ReferenceStats, RefStatsFormatError, read_refstats, read_refstats_isolated, write_refstats

__all__ = ["stats_dir", "cache_path", "fetch", "load", "verify", "info", "list_entries", "verified_entry",
           "expected_source_sha256"]


def stats_dir():
    """``stats/`` under the cache root (:func:`genmetrics.stats.environment.cache_root`)."""
    return os.path.join(genmetrics_home(), "stats")


def cache_path(entry):
    """Where the entry's .h5 lives in the cache."""
    return os.path.join(stats_dir(), f"{entry.ref}.h5")


def _source_path(entry, index):
    """Where the file of the entry's source number `index` (0-based) is kept: ``sources/<ref>/source-<k>.<fmt>``.

    Made from names we checked (the ref, the position, the format), never from the URL: a URL ending in
    ``/..`` must not name a file outside the entry's folder."""
    return os.path.join(stats_dir(), "sources", entry.ref, f"source-{index + 1}.{entry.sources[index].format}")


def _record_path(entry):
    return os.path.join(stats_dir(), f"{entry.ref}.source.sha256")


def _recorded_sha256(entry):
    path = _record_path(entry)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)["sha256"]


def _write_text(path, text):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _record_sha256(entry, sha256, url):
    _write_text(_record_path(entry), json.dumps({"sha256": sha256, "url": redact_url(url), "ref": entry.ref}))


def expected_source_sha256(entry):
    """The hash the entry's source file must have: the manifest's pin, else the one recorded at the first fetch
    of an unpinned entry, else None (never fetched)."""
    return entry.sha256 or _recorded_sha256(entry)


def list_entries():
    """All manifest entries (packaged + $GENMETRICS_MANIFEST), sorted by ref."""
    return sorted(load_manifests(), key=lambda e: (e.name, e.split, str(e.resolution), e.mode, e.version))


def fetch(ref, progress=True, sqrt_sigma=True):
    """Make sure the entry `ref` is in the cache (download + convert if needed); return its .h5 path.

    Sources are tried in order; each download resumes, retries, shows progress, is bounded (deadline,
    minimum throughput, size cap: the source's ``size`` when the manifest gives one) and checks
    the pinned or recorded sha256. The file is then validated (it must read as its declared format, with
    mu (D,) and sigma (D, D)) and converted; only a file that passed is recorded as the hash of an
    unpinned entry. Any failure of a source (HTTP error, redirect loop, an HTML page instead of the file,
    a conversion error, a hash mismatch) moves on to the next source. An .npz source is converted to .h5
    with provenance (source URL, source sha256, the manifest's metadata) and, with ``sqrt_sigma``, the
    cached square root of sigma.
    """
    import filelock

    entry = resolve(ref)
    final = cache_path(entry)
    if os.path.isfile(final):
        return final
    writable_dir(stats_dir())
    with filelock.FileLock(final + ".lock"):
        if os.path.isfile(final):
            return final
        errors, mismatch, no_network = [], False, False
        for index in range(len(entry.sources)):
            try:
                _fetch_source(entry, index, final, progress, sqrt_sigma)
                return final
            except _SourceSkipped:
                continue
            except ChecksumMismatchError as error:
                detail = "" if entry.sha256 else " (the hash recorded at the first fetch of this unpinned entry)"
                errors.append(f"{error}{detail}")
                mismatch = True
            except (DownloadError, RefStatsFormatError) as error:
                errors.append(str(error))
                no_network = no_network or isinstance(error, NetworkUnavailableError)
        if offline():
            raise OfflineError(
                f"GENMETRICS_OFFLINE=1 and {entry.ref} is not in the cache. On a machine with network run "
                f"`genmetrics stats fetch {entry.ref}` and copy {final} here, or download "
                f"{redact_url(entry.sources[0].url)} and put it at {_source_path(entry, 0)}"
            )
        error_type = ChecksumMismatchError if mismatch else DownloadError
        hint = ""
        if no_network:
            hint = (f". Without network: download {redact_url(entry.sources[0].url)} elsewhere and put it at "
                    f"{_source_path(entry, 0)}; GENMETRICS_OFFLINE=1 skips the download attempts")
        raise error_type(f"could not fetch {entry.ref}: " + " | ".join(errors) + hint)


class _SourceSkipped(Exception):
    """Offline, and this source is not on disk."""


def _fetch_source(entry, index, final, progress, sqrt_sigma):
    """Download the entry's source number `index`, validate and convert it into `final`, then record its hash
    (unpinned entries).

    A file that fails validation or conversion is deleted (it must not be taken for the entry later)."""
    source, src = entry.sources[index], _source_path(entry, index)
    if offline() and not os.path.isfile(src):
        raise _SourceSkipped()
    expected = expected_source_sha256(entry)
    got = download(source.url, src, sha256=expected, progress=progress, max_bytes=source.size)
    try:
        _convert(entry, source, src, got, final, sqrt_sigma)
    except (RefStatsFormatError, OSError, ValueError) as error:
        for path in (src, final):
            if os.path.isfile(path):
                os.remove(path)
        raise RefStatsFormatError(f"{redact_url(source.url)} is not valid {source.format} statistics ({error}); "
                                  f"the file was discarded") from None
    if expected is None:
        _record_sha256(entry, got, source.url)
    _write_text(final + ".sha256", file_sha256(final))


def _entry_meta(entry, url, sha256):
    meta = {"dataset": entry.name, "split": entry.split, "resolution": entry.resolution, "mode": entry.mode,
            "version": entry.version, "registry_ref": entry.ref, "source": redact_url(url), "source_sha256": sha256,
            "manifest": redact_url(entry.manifest)}
    if entry.num_samples is not None:
        meta["num_samples"] = entry.num_samples
    for key in ("provider", "citation", "license", "description"):
        if getattr(entry, key):
            meta[key] = getattr(entry, key)
    return meta


def _convert(entry, source, src, sha256, final, sqrt_sigma):
    """Turn the downloaded source into the cached .h5 (npz: convert; h5: validate and move)."""
    if source.format == "h5":
        stats = read_refstats_isolated(src)  # every check once, where the file enters (PSD, root, features)
        if stats.meta.get("mode") != entry.mode:
            os.remove(src)
            raise RefStatsFormatError(f"{redact_url(source.url)} holds statistics of mode {stats.meta.get('mode')!r} "
                                      f"but the manifest entry {entry.ref} says {entry.mode!r}; fix the manifest")
        os.replace(src, final)
        return
    meta = _entry_meta(entry, source.url, sha256)
    stats = read_npz(src, **meta)
    if sqrt_sigma:
        from genmetrics.stats import sqrtm_psd

        stats.sqrt_sigma = sqrtm_psd(stats.sigma)
    write_refstats(final, stats)


def _looks_like_path(text):
    return os.sep in text or "/" in text or text.lower().endswith((".h5", ".hdf5", ".npz"))


def load(ref_or_path, progress=True):
    """ReferenceStats from a registry ref (fetched when not cached), an .h5 or .npz path, or a ReferenceStats.

    The one loader of statistics: scoring, the CLI, deferred scoring and the evaluator all call it. A file
    is read once per process while it is unchanged (same size and modification time), so a training loop
    that scores every few steps does not re-read it. ``features`` of an .h5 file are read on first
    access, so loading a cached entry reads only the moments (well under a second).
    """
    if isinstance(ref_or_path, ReferenceStats):
        return ref_or_path
    if not isinstance(ref_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a registry ref such as 'cifar10-train-32', a path to an .h5/.npz statistics "
                        f"file or a ReferenceStats, got {type(ref_or_path).__name__}")
    text = os.fspath(ref_or_path)
    if os.path.isfile(text):
        return _read_once(text)
    if _looks_like_path(text):
        raise FileNotFoundError(f"statistics file {text} does not exist (it is a path, not a registry ref)")
    return _read_once(fetch(text, progress=progress))


_LOADED = {}
_LOADED_MAX = 4


def _read_once(path):
    """Read an .h5 (or .npz) file, or return the copy read before while the file is unchanged."""
    path = os.path.abspath(path)
    status = os.stat(path)
    key = (path, status.st_mtime_ns, status.st_size)
    if key not in _LOADED:
        if path.lower().endswith(".npz"):
            stats = read_npz(path)
            stats.path = path
        else:
            stats = read_refstats(path)
        while len(_LOADED) >= _LOADED_MAX:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = stats
    return _LOADED[key]


def _resolve_file(ref_or_path):
    """(path, manifest entry or None) for a ref or an .h5 path."""
    text = os.fspath(ref_or_path)
    if os.path.isfile(text):
        return os.path.abspath(text), None
    if _looks_like_path(text):
        raise FileNotFoundError(f"statistics file {text} does not exist")
    entry = resolve(text)
    return cache_path(entry), entry


def verify(ref_or_path):
    """Recompute hashes and validate a cached entry or an .h5 file; returns a report dict, raises on failure.

    For a ref: the cached source's sha256 must equal the pinned (or first-fetch recorded) hash, and the
    .h5 must pass every check of ``read_refstats(path, full=True)`` (layout: no links, external storage or
    virtual datasets; attribute types; shapes and stored sizes; finite, symmetric, PSD sigma; sqrt_sigma
    its root; sum/outer_sum and the features consistent with mu/sigma). For a path: the same checks, and
    its sha256 is reported. The file is read in a child process first (:func:`read_refstats_isolated`), so
    one that hangs or crashes the HDF5 library fails too. Failures raise a one-line error naming the file and
    the check.
    """
    path, entry = _resolve_file(ref_or_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{entry.ref} is not in the cache ({path}); run `genmetrics stats fetch {entry.ref}`")
    report = {"path": path, "sha256": file_sha256(path)}
    if entry is not None and os.path.isfile(path + ".sha256"):
        with open(path + ".sha256", encoding="utf-8") as f:
            written = f.read().strip()
        if written != report["sha256"]:
            raise ChecksumMismatchError(f"{path} has sha256 {report['sha256']} but had {written} when fetch wrote it: "
                                        f"the cached file changed or is damaged; delete it and fetch it again")
    if entry is not None:
        expected = expected_source_sha256(entry)
        report.update(ref=entry.ref, expected_sha256=expected, pinned=entry.sha256 is not None)
        kept = next((p for p in (_source_path(entry, i) for i in range(len(entry.sources))) if os.path.isfile(p)),
                    None)
        checked = path if entry.sources[0].format == "h5" else kept
        if checked is not None and expected is not None:
            got = file_sha256(checked)
            if got != expected:
                raise ChecksumMismatchError(f"{checked} has sha256 {got}, expected {expected} ({entry.ref}); delete "
                                            f"{path} and fetch it again")
            report["source_sha256"] = got
    stats = read_refstats_isolated(path)
    report.update(n=stats.n, dim=stats.dim, features=stats.has_features, ok=True)
    return report


def info(ref_or_path):
    """Manifest entry fields (for a ref), cache status, and the file's attributes when it is on disk."""
    path, entry = _resolve_file(ref_or_path)
    result = {}
    if entry is not None:
        result.update(ref=entry.ref, name=entry.name, split=entry.split, resolution=entry.resolution,
                      mode=entry.mode, version=entry.version, num_samples=entry.num_samples,
                      sha256=entry.sha256, recorded_sha256=_recorded_sha256(entry),
                      sources=[redact_url(s.url) for s in entry.sources], provider=entry.provider,
                      citation=entry.citation, license=entry.license, manifest=redact_url(entry.manifest))
    result.update(path=path, cached=os.path.isfile(path))
    if os.path.isfile(path):
        stats = read_refstats(path)
        shown = {k: redact_url(v) if k in ("source", "manifest") and isinstance(v, str) else v
                 for k, v in stats.meta.items()}  # files written before URLs were redacted may hold a token
        result.update(attributes=shown, n=stats.n, dim=stats.dim, has_features=stats.has_features,
                      has_moments=stats.sum is not None, has_sqrt_sigma=stats.sqrt_sigma is not None)
    return result


def _recorded_file_sha256(path):
    """The hash fetch recorded when it wrote the cached .h5 at `path` (``<path>.sha256``), or None."""
    try:
        with open(path + ".sha256", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def verified_entry(path):
    """The manifest entry whose cached .h5 `path` is, when its bytes verify; else None.

    Facts only, nothing the file says about itself: `path` is the cache file of an entry (``stats/<ref>.h5``,
    a name fetch made), and the file's sha256, computed now (once per path, size and modification time), equals
    the hash fetch recorded when it wrote the file and, when every source of the entry is an .h5 (the cached
    file is the download itself), the manifest's pinned or first-fetch hash. A file anywhere else, a changed
    file, or a ref the manifests no longer know gives None. Provenance params use it for ``reference``.
    """
    if not path or not os.path.isfile(path):
        return None
    name = os.path.basename(path)
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(stats_dir()) or not name.endswith(".h5"):
        return None
    try:
        entry = resolve(name[:-len(".h5")])
    except (ValueError, KeyError, OSError, RuntimeError):  # not a ref, unknown, or a manifest unreadable now
        return None
    if not os.path.isfile(cache_path(entry)) or not os.path.samefile(cache_path(entry), path):
        return None
    sha256 = cached_file_sha256(path)
    if sha256 != _recorded_file_sha256(path):
        return None
    if all(s.format == "h5" for s in entry.sources) and sha256 != expected_source_sha256(entry):
        return None
    return entry
