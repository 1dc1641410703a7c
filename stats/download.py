"""The one downloader used for weights and reference statistics.

``download(url, dest, sha256=None)`` fetches ``url`` into the file ``dest`` and returns the file's hex
sha256. It

- streams with ``requests`` into ``dest + ".part"`` and shows a tqdm progress bar (bytes);
- resumes an interrupted transfer with ``Range: bytes=N-`` from the ``.part`` file (a server that answers
  ``200`` instead of ``206`` restarts the transfer from byte 0);
- retries 5xx answers, 408/429, connection errors, timeouts and truncated bodies with exponential backoff
  (``backoff * 2**k`` seconds before retry ``k``), at most ``retries`` times;
- fails at once, naming the URL and the status, on any other 4xx answer (404, 403, ...), and on a redirect
  loop (one line naming the URL);
- is bounded (:class:`Limits`): an overall deadline for all attempts together, a minimum throughput
  (a server trickling bytes is dropped after ``rate_window`` seconds below ``min_rate``, then the transfer
  resumes if retries are left) and a size cap (``max_bytes``: the caller's, e.g. from a manifest, else the
  default; a ``Content-Length`` above the cap is refused before the body is read, and a body that goes on
  past its ``Content-Length`` or past the cap is cut and refused);
- verifies ``sha256`` when given: on a mismatch the partial file is deleted and
  :class:`ChecksumMismatchError` names the expected and the received hash;
- moves the finished file into place with ``os.replace`` (atomic: ``dest`` never holds a partial file);
- holds ``filelock.FileLock(dest + ".lock")`` throughout, so when several processes ask for the same file
  one downloads it and the others find it done;
- honours ``GENMETRICS_OFFLINE=1``: no network; a missing file raises :class:`OfflineError` saying which
  file is missing and where to put it;
- detects a missing network once per process: a host whose name does not resolve or that refuses or
  times out the connection is not retried, and later downloads from it in the same process fail at once
  with :class:`NetworkUnavailableError` (`clear_unreachable` forgets, e.g. once the network is back).

``file://`` URLs and plain paths are copied (same checks, same atomic rename).

No message names a URL with its secrets: the userinfo (``user:password@``), the query string (e.g. a signed
URL's token) and the fragment are left out of every error (:func:`redact_url`), while the request itself
uses the whole URL.
"""
import contextlib
import functools
import hashlib
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace

from .environment import (DOWNLOAD_DEADLINE, DOWNLOAD_MAX_BYTES, DOWNLOAD_MIN_RATE, DOWNLOAD_RATE_WINDOW, HOME,
                          OFFLINE)
from .environment import cache_root as genmetrics_home

__all__ = ["genmetrics_home", "offline", "download", "fetch_bytes", "file_sha256", "cached_file_sha256", "Limits",
           "redact_url", "writable_dir", "clear_unreachable", "DownloadError", "ChecksumMismatchError", "OfflineError",
           "NetworkUnavailableError", "CacheNotWritableError", "HOME_ENV", "OFFLINE_ENV"]

HOME_ENV, OFFLINE_ENV = HOME.name, OFFLINE.name
_CHUNK = 1 << 20
_NET_CHUNK = 1 << 16  # small reads keep almost all bytes of a body that is cut short
_RETRYABLE_4XX = (408, 429)


class DownloadError(RuntimeError):
    """A download failed (bad status, network failure after all retries, offline mode)."""


class ChecksumMismatchError(DownloadError):
    """The downloaded bytes do not have the expected sha256."""


class OfflineError(DownloadError):
    """GENMETRICS_OFFLINE=1 and the file is not on disk."""


@dataclass(frozen=True)
class Limits:
    """Bounds of one download: `deadline` seconds for all attempts together, at least `min_rate` bytes/s
    over every `rate_window` seconds, at most `max_bytes` bytes.

    `Limits.from_env()` reads GENMETRICS_DOWNLOAD_DEADLINE (3600 s), GENMETRICS_DOWNLOAD_MIN_RATE
    (1024 bytes/s), GENMETRICS_DOWNLOAD_RATE_WINDOW (30 s) and GENMETRICS_DOWNLOAD_MAX_BYTES (4 GiB).
    """

    deadline: float = 3600.0
    min_rate: float = 1024.0
    rate_window: float = 30.0
    max_bytes: int = 4 << 30

    @classmethod
    def from_env(cls):
        """The defaults, overridden by the GENMETRICS_DOWNLOAD_* variables that are set."""
        def number(variable, default, kind=float):
            text = variable.value()
            try:
                return kind(text) if text else default
            except ValueError:
                raise ValueError(f"{variable.name}={text!r} is not a number; fix or unset it") from None

        return cls(number(DOWNLOAD_DEADLINE, cls.deadline), number(DOWNLOAD_MIN_RATE, cls.min_rate),
                   number(DOWNLOAD_RATE_WINDOW, cls.rate_window), number(DOWNLOAD_MAX_BYTES, cls.max_bytes, int))


def redact_url(url):
    """`url` as it may be stored or printed: without userinfo (``user:password@``), query string and fragment.

    ``https://u:p@host:8443/a/b.npz?sig=TOKEN#x`` -> ``https://host:8443/a/b.npz``. Text that is not a URL
    with a scheme (a local path, a Windows drive path) is returned unchanged.
    """
    text = os.fspath(url)
    parts = urllib.parse.urlsplit(text)
    if len(parts.scheme) < 2:
        return text
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _secrets_of(url):
    """The parts of `url` that `redact_url` leaves out and that a message must not show (longest first)."""
    parts = urllib.parse.urlsplit(os.fspath(url))
    if len(parts.scheme) < 2:
        return []
    found = [parts.netloc.rpartition("@")[0] + "@", "?" + parts.query, "#" + parts.fragment]
    return sorted({s for s in found if len(s) > 1}, key=len, reverse=True)


def _redact_text(text, url):
    """`text` with `url` and each of its secret parts (userinfo, query string, fragment) left out."""
    text = text.replace(os.fspath(url), redact_url(url))
    for secret in _secrets_of(url):
        text = text.replace(secret, "")
    return text


@contextlib.contextmanager
def _errors_without_secrets(url):
    """Re-raise a :class:`DownloadError` raised inside with `url`'s secrets removed from its message (and
    its chained exception dropped: requests' messages repeat the URL with its query string)."""
    try:
        yield
    except DownloadError as error:
        error.args = tuple(_redact_text(a, url) if isinstance(a, str) else a for a in error.args)
        if isinstance(getattr(error, "summary", None), str):
            error.summary = _redact_text(error.summary, url)
        error.__cause__, error.__suppress_context__ = None, True
        raise


def offline():
    """True when ``GENMETRICS_OFFLINE`` is set to 1/true/yes/on: use the cache only, never the network."""
    return OFFLINE.value().lower() in ("1", "true", "yes", "on")


def file_sha256(path):
    """Hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _remembered_sha256(path, size, mtime_ns):
    return file_sha256(path)


def cached_file_sha256(path):
    """``file_sha256`` remembered per (absolute path, size, modification time): large weight and statistics
    files that are only read are hashed once per process."""
    path = os.path.abspath(path)
    stat = os.stat(path)
    return _remembered_sha256(path, stat.st_size, stat.st_mtime_ns)


class NetworkUnavailableError(DownloadError):
    """The host could not be reached (name resolution or connection failed), now or earlier in this process.

    ``summary`` is the short form without the URL, e.g. ``127.0.0.1 is unreachable (connection failed: ...)``.
    """

    def __init__(self, url, host, reason, earlier):
        self.summary = f"{host} {'was unreachable earlier in this process' if earlier else 'is unreachable'} ({reason})"
        super().__init__(f"downloading {url} {'skipped' if earlier else 'failed'}: {self.summary}")


_unreachable = {}  # (scheme, host, port) -> the first failure, for the life of the process


def _host_key(url):
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def clear_unreachable():
    """Forget the hosts found unreachable in this process, so that the next download tries them again."""
    _unreachable.clear()


def _nested(error):
    """The exception `error` wraps: urllib3's ``reason``, the first exception argument (requests), or the cause."""
    reason = getattr(error, "reason", None)
    if isinstance(reason, BaseException):
        return reason
    wrapped = next((a for a in error.args if isinstance(a, BaseException)), None)
    return wrapped or error.__cause__ or error.__context__


def _connect_failure(error):
    """The one-line reason when `error` is a failure to resolve or connect to the host, else None."""
    import urllib3

    for _ in range(10):
        if error is None:
            return None
        if isinstance(error, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)):
            kind = "name resolution failed" if isinstance(error, urllib3.exceptions.NameResolutionError) \
                else "connection failed"
            return f"{kind}: {str(error).split(': ', 1)[-1][:200]}"
        error = _nested(error)
    return None


class CacheNotWritableError(DownloadError, PermissionError):
    """A cache folder cannot be created or written."""


def writable_dir(folder):
    """Create `folder` if needed and check that files can be made in it; else a one-line
    :class:`CacheNotWritableError` naming the folder and the fix. Returns `folder`."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as error:
        raise CacheNotWritableError(
            f"cannot write to the genmetrics cache folder {folder} ({error.strerror or error}); make it writable "
            f"or set {HOME_ENV} to a writable folder (files already there are still used)") from None
    return folder


def download(url, dest, sha256=None, progress=True, retries=5, backoff=0.5, timeout=60, max_bytes=None,
             limits=None):
    """Fetch ``url`` (http(s), ``file://`` or a local path) into ``dest``; return the file's hex sha256.

    An existing ``dest`` whose hash matches ``sha256`` (or any existing ``dest`` when ``sha256`` is None)
    is kept and not downloaded again (this needs no write access). ``timeout`` is the connect and read
    timeout in seconds; ``limits`` (default `Limits.from_env()`) bound the whole transfer, and
    ``max_bytes`` (e.g. a size from a manifest) replaces its size cap. See the module docstring.
    """
    with _errors_without_secrets(url):
        return _download(url, dest, sha256, progress, retries, backoff, timeout, max_bytes, limits)


def _download(url, dest, sha256, progress, retries, backoff, timeout, max_bytes, limits):
    """`download` (its errors may still name the whole URL)."""
    import filelock

    dest = os.path.abspath(os.fspath(dest))
    expected = sha256.lower() if sha256 else None
    limits = limits or Limits.from_env()
    if max_bytes:
        limits = replace(limits, max_bytes=int(max_bytes))
    if os.path.isfile(dest):  # complete files appear by rename: reading one needs neither the lock nor write access
        got = file_sha256(dest)
        if expected is None or got == expected:
            return got
    if offline() and not os.path.isfile(dest):
        raise OfflineError(
            f"{OFFLINE_ENV}=1 and {dest} is not on disk. Download {url} on a machine with network access "
            f"and put it at {dest} (or unset {OFFLINE_ENV})"
        )
    writable_dir(os.path.dirname(dest))
    with filelock.FileLock(dest + ".lock"):
        if os.path.isfile(dest):
            got = file_sha256(dest)
            if expected is None or got == expected:
                return got
            if offline():
                raise ChecksumMismatchError(
                    f"{dest} has sha256 {got}, expected {expected}, and {OFFLINE_ENV}=1 forbids downloading "
                    f"it again from {url}; replace the file with the right one or unset {OFFLINE_ENV}"
                )
        return _download_locked(url, dest, expected, progress, _Transfer(retries, backoff, timeout, limits))


@dataclass(frozen=True)
class _Transfer:
    retries: int
    backoff: float
    timeout: float
    limits: Limits


def _download_locked(url, dest, expected, progress, transfer):
    """The body of `download` under the file lock: fetch into ``dest.part``, check, rename."""
    part = dest + ".part"
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    stale_part = os.path.isfile(part)  # left by an interrupted earlier call: resumed below
    if scheme in ("http", "https"):
        _http_to_part(url, part, progress, transfer)
    else:
        _copy_to_part(url, part, transfer.limits.max_bytes)
    got = file_sha256(part)
    if expected is not None and got != expected and stale_part and scheme in ("http", "https"):
        os.remove(part)  # the old .part may belong to another version of the file: once more from byte 0
        _http_to_part(url, part, progress, transfer)
        got = file_sha256(part)
    if expected is not None and got != expected:
        os.remove(part)
        raise ChecksumMismatchError(
            f"sha256 mismatch for {url}: expected {expected}, got {got}; the download was discarded "
            f"(nothing was written to {dest})"
        )
    os.replace(part, dest)
    return got


def fetch_bytes(url, max_bytes=1 << 20, timeout=30, limits=None):
    """The body of a small http(s) resource (e.g. a remote manifest) in memory, under the same bounds as
    `download` (deadline, minimum throughput, redirect loops) and at most `max_bytes` bytes; one attempt."""
    import tempfile

    limits = replace(limits or Limits.from_env(), max_bytes=int(max_bytes))
    with _errors_without_secrets(url), tempfile.TemporaryDirectory(prefix="genmetrics-fetch-") as tmp:
        part = os.path.join(tmp, "body.part")
        _http_to_part(url, part, False, _Transfer(0, 0.0, timeout, limits))
        with open(part, "rb") as f:
            return f.read()


def _local_source_path(url):
    """A ``file://`` URL or a plain path -> a local file path."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() == "file":
        return urllib.request.url2pathname(parts.path)
    if len(parts.scheme) > 1:
        raise DownloadError(f"unsupported URL scheme {parts.scheme!r} in {url}; use http(s)://, file:// or a path")
    return os.path.expanduser(url)


def _copy_to_part(url, part, max_bytes):
    source = _local_source_path(url)
    if not os.path.isfile(source):
        raise DownloadError(f"{url}: no such file ({source})")
    if os.path.getsize(source) > max_bytes:
        raise DownloadError(f"{url} has {os.path.getsize(source)} bytes, more than the cap of {max_bytes}; raise "
                            f"GENMETRICS_DOWNLOAD_MAX_BYTES if the file is right")
    shutil.copyfile(source, part)


def _http_to_part(url, part, progress, transfer):
    """Download ``url`` into ``part``, resuming and retrying within the deadline; returns when ``part``
    holds the whole body."""
    import requests
    import urllib3

    failures = []
    deadline = time.monotonic() + transfer.limits.deadline
    host = _host_key(url)
    if host in _unreachable:
        raise NetworkUnavailableError(url, host[1], _unreachable[host], earlier=True)
    for attempt in range(transfer.retries + 1):
        if attempt:
            pause = transfer.backoff * 2 ** (attempt - 1)
            if time.monotonic() + pause >= deadline:
                break
            time.sleep(pause)
        try:
            if _http_attempt(url, part, progress, transfer, deadline):
                return
            failures.append("the server ended the body early")
        except _RetryableStatus as error:
            failures.append(str(error))
        except requests.TooManyRedirects as error:
            last = redact_url(getattr(error.response, "url", None) or url)  # a redirect may carry its own token
            raise DownloadError(f"downloading {url} failed: a redirect loop (too many redirects, the last to {last}); "
                                f"fix the URL or the server") from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError, urllib3.exceptions.HTTPError) as error:
            reason = _connect_failure(error)
            if reason:  # no network or no such host: retrying only costs time (remembered for the process)
                _unreachable.setdefault(host, reason)
                raise NetworkUnavailableError(url, host[1], reason, earlier=False) from None
            failures.append(_first_line(error))
        except requests.RequestException as error:
            raise DownloadError(f"downloading {url} failed: {_first_line(error)}") from None
        if time.monotonic() >= deadline:
            break
    else:
        raise DownloadError(f"downloading {url} failed after {transfer.retries + 1} attempts: "
                            + "; ".join(failures[-3:]))
    raise DownloadError(f"downloading {url} did not finish within {transfer.limits.deadline:g} s "
                        f"(GENMETRICS_DOWNLOAD_DEADLINE): " + "; ".join(failures[-3:]))


def _first_line(error):
    """`Type: first line` of an exception (requests' messages repeat nested reprs), without query strings
    (requests names the URL it asked for, e.g. ``... with url: /a.npz?sig=...``)."""
    lines = str(error).strip().splitlines()
    return re.sub(r"\?[^\s'\")]*", "", f"{type(error).__name__}: {lines[0] if lines else ''}")[:300]


class _RetryableStatus(Exception):
    pass


def _open_mode(response, have):
    """("ab", have) when the answer continues our partial file, ("wb", 0) when it is the whole body."""
    status = response.status_code
    if status == 206 and have and _content_range_start(response) == have:
        return "ab", have
    if status in (200, 206) and (status == 200 or _content_range_start(response) == 0):
        return "wb", 0  # the server ignored our Range: take the whole body from byte 0
    raise _RetryableStatus(f"unexpected HTTP {status} (Content-Range {response.headers.get('Content-Range')!r}) "
                           f"for a resume at byte {have}")


def _http_attempt(url, part, progress, transfer, deadline):
    """One GET (ranged when ``part`` has bytes). True when complete, False when the body was cut short."""
    import requests

    have = os.path.getsize(part) if os.path.isfile(part) else 0
    headers = {"Accept-Encoding": "identity"}  # byte counts, ranges and the cap are about the file itself
    if have:
        headers["Range"] = f"bytes={have}-"
    left = max(0.1, deadline - time.monotonic())
    timeouts = (min(transfer.timeout, left), min(transfer.timeout, transfer.limits.rate_window, left))
    with requests.get(url, headers=headers, stream=True, timeout=timeouts) as response:
        status = response.status_code
        if status == 416 and have:  # our .part is not a prefix the server recognises: start again
            os.remove(part)
            raise _RetryableStatus(f"HTTP 416 for a resumed range at byte {have}; restarting")
        if status >= 500 or status in _RETRYABLE_4XX:
            raise _RetryableStatus(f"HTTP {status}")
        if status >= 400:
            raise DownloadError(f"downloading {url} failed: HTTP {status} {response.reason or ''}".rstrip())
        mode, start = _open_mode(response, have)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None and length.isdigit() else None
        cap = transfer.limits.max_bytes
        if total is not None and total > cap:
            _discard(part)
            raise DownloadError(f"{url} announces {total} bytes, more than the cap of {cap}; raise "
                                f"GENMETRICS_DOWNLOAD_MAX_BYTES if the file is right")
        with open(part, mode) as f:
            received = _stream_body(response, f, start, total, transfer.limits, deadline, url,
                                    _progress_bar(part, total, start, progress))
            f.flush()
            os.fsync(f.fileno())
        return total is None or received >= total


def _progress_bar(part, total, start, progress):
    from tqdm.auto import tqdm

    name = os.path.basename(part)[: -len(".part")]
    return tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                disable=not progress, leave=False)


def _discard(part):
    try:
        os.remove(part)
    except FileNotFoundError:
        pass


def _stream_body(response, f, received, total, limits, deadline, url, bar):
    """Copy the body into `f` as it arrives; enforce the size cap, the deadline and the minimum rate.
    Returns the byte count of the part file."""
    limit = min(limits.max_bytes, total if total is not None else limits.max_bytes)
    window_start, window_bytes = time.monotonic(), 0
    with bar:
        while True:
            block = response.raw.read1(_NET_CHUNK, decode_content=True)
            if not block:
                return received
            if received + len(block) > limit:
                f.close()
                _discard(f.name)
                what = "its Content-Length" if total is not None and total <= limits.max_bytes else \
                    f"the cap of {limits.max_bytes} bytes (GENMETRICS_DOWNLOAD_MAX_BYTES)"
                raise DownloadError(f"{url} sent more than {what}; the download was discarded")
            f.write(block)
            received += len(block)
            window_bytes += len(block)
            bar.update(len(block))
            now = time.monotonic()
            if now >= deadline:
                raise DownloadError(f"downloading {url} did not finish within {limits.deadline:g} s "
                                    f"(GENMETRICS_DOWNLOAD_DEADLINE); {received} bytes arrived")
            if now - window_start >= limits.rate_window:
                if window_bytes < limits.min_rate * (now - window_start):
                    raise _RetryableStatus(f"slower than {limits.min_rate:g} bytes/s over {now - window_start:.1f} "
                                           f"s (GENMETRICS_DOWNLOAD_MIN_RATE)")
                window_start, window_bytes = now, 0


def _content_range_start(response):
    """First byte position of a ``Content-Range: bytes a-b/n`` header, or None."""
    value = response.headers.get("Content-Range", "")
    if not value.startswith("bytes "):
        return None
    try:
        return int(value[len("bytes "):].split("-", 1)[0])
    except ValueError:
        return None
