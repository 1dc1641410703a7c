"""The one downloader used for weights and reference statistics.

``download(url, dest, sha256=None)`` fetches ``url`` into the file ``dest`` and returns the file's hex
sha256. It

- streams with ``requests`` into ``dest + ".part"`` and shows a tqdm progress bar (bytes);
- resumes an interrupted transfer with ``Range: bytes=N-`` from the ``.part`` file (a server that answers
  ``200`` instead of ``206`` restarts the transfer from byte 0);
- retries 5xx answers, 408/429, connection errors, timeouts and truncated bodies with exponential backoff
  (``backoff * 2**k`` seconds before retry ``k``), at most ``retries`` times;
- fails at once, naming the URL and the status, on any other 4xx answer (404, 403, ...);
- verifies ``sha256`` when given: on a mismatch the partial file is deleted and
  :class:`ChecksumMismatchError` names the expected and the received hash;
- moves the finished file into place with ``os.replace`` (atomic: ``dest`` never holds a partial file);
- holds ``filelock.FileLock(dest + ".lock")`` throughout, so when several processes ask for the same file
  one downloads it and the others find it done;
- honours ``GENMETRICS_OFFLINE=1``: no network; a missing file raises :class:`OfflineError` saying which
  file is missing and where to put it.

``file://`` URLs and plain paths are copied (same checks, same atomic rename).
"""
import functools
import hashlib
import os
import shutil
import time
import urllib.parse
import urllib.request

__all__ = ["genmetrics_home", "offline", "download", "file_sha256", "cached_file_sha256", "DownloadError", "ChecksumMismatchError",
           "OfflineError", "HOME_ENV", "OFFLINE_ENV"]

HOME_ENV = "GENMETRICS_HOME"
OFFLINE_ENV = "GENMETRICS_OFFLINE"
_CHUNK = 1 << 20
_NET_CHUNK = 1 << 16  # small reads keep almost all bytes of a body that is cut short
_RETRYABLE_4XX = (408, 429)


class DownloadError(RuntimeError):
    """A download failed (bad status, network failure after all retries, offline mode)."""


class ChecksumMismatchError(DownloadError):
    """The downloaded bytes do not have the expected sha256."""


class OfflineError(DownloadError):
    """GENMETRICS_OFFLINE=1 and the file is not on disk."""


def genmetrics_home():
    """The cache root: ``$GENMETRICS_HOME``, else ``~/.cache/genmetrics`` (not created here)."""
    home = os.environ.get(HOME_ENV, "").strip()
    return os.path.abspath(os.path.expanduser(home or os.path.join("~", ".cache", "genmetrics")))


def offline():
    """True when ``GENMETRICS_OFFLINE`` is set to 1/true/yes/on: use the cache only, never the network."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


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


def download(url, dest, sha256=None, progress=True, retries=5, backoff=0.5, timeout=60):
    """Fetch ``url`` (http(s), ``file://`` or a local path) into ``dest``; return the file's hex sha256.

    An existing ``dest`` whose hash matches ``sha256`` (or any existing ``dest`` when ``sha256`` is None)
    is kept and not downloaded again. ``timeout`` is the connect and read timeout in seconds.
    See the module docstring for resume, retry, locking and offline behaviour.
    """
    import filelock

    dest = os.path.abspath(os.fspath(dest))
    expected = sha256.lower() if sha256 else None
    os.makedirs(os.path.dirname(dest), exist_ok=True)
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
        if offline():
            raise OfflineError(
                f"{OFFLINE_ENV}=1 and {dest} is not on disk. Download {url} on a machine with network access "
                f"and put it at {dest} (or unset {OFFLINE_ENV})"
            )
        part = dest + ".part"
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        stale_part = os.path.isfile(part)  # left by an interrupted earlier call: resumed below
        if scheme in ("http", "https"):
            _http_to_part(url, part, progress, retries, backoff, timeout)
        else:
            _copy_to_part(url, part)
        got = file_sha256(part)
        if expected is not None and got != expected and stale_part and scheme in ("http", "https"):
            os.remove(part)  # the old .part may belong to another version of the file: once more from byte 0
            _http_to_part(url, part, progress, retries, backoff, timeout)
            got = file_sha256(part)
        if expected is not None and got != expected:
            os.remove(part)
            raise ChecksumMismatchError(
                f"sha256 mismatch for {url}: expected {expected}, got {got}; the download was discarded "
                f"(nothing was written to {dest})"
            )
        os.replace(part, dest)
        return got


def _local_source_path(url):
    """A ``file://`` URL or a plain path -> a local file path."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() == "file":
        return urllib.request.url2pathname(parts.path)
    if len(parts.scheme) > 1:
        raise DownloadError(f"unsupported URL scheme {parts.scheme!r} in {url}; use http(s)://, file:// or a path")
    return os.path.expanduser(url)


def _copy_to_part(url, part):
    source = _local_source_path(url)
    if not os.path.isfile(source):
        raise DownloadError(f"{url}: no such file ({source})")
    shutil.copyfile(source, part)


def _http_to_part(url, part, progress, retries, backoff, timeout):
    """Download ``url`` into ``part``, resuming and retrying; returns when ``part`` holds the whole body."""
    import requests

    failures = []
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            if _http_attempt(url, part, progress, timeout):
                return
            failures.append("the server ended the body early")
        except _RetryableStatus as error:
            failures.append(str(error))
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as error:
            failures.append(f"{type(error).__name__}: {error}")
    raise DownloadError(f"downloading {url} failed after {retries + 1} attempts: " + "; ".join(failures[-3:]))


class _RetryableStatus(Exception):
    pass


def _http_attempt(url, part, progress, timeout):
    """One GET (ranged when ``part`` has bytes). True when complete, False when the body was cut short."""
    import requests
    from tqdm.auto import tqdm

    have = os.path.getsize(part) if os.path.isfile(part) else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        status = response.status_code
        if status == 416 and have:  # our .part is not a prefix the server recognises: start again
            os.remove(part)
            raise _RetryableStatus(f"HTTP 416 for a resumed range at byte {have}; restarting")
        if status >= 500 or status in _RETRYABLE_4XX:
            raise _RetryableStatus(f"HTTP {status}")
        if status >= 400:
            raise DownloadError(f"downloading {url} failed: HTTP {status} {response.reason or ''}".rstrip())
        if status == 206 and have and _content_range_start(response) == have:
            mode, start = "ab", have
        elif status in (200, 206) and (status == 200 or _content_range_start(response) == 0):
            mode, start = "wb", 0  # the server ignored our Range: take the whole body from byte 0
        else:
            raise _RetryableStatus(f"unexpected HTTP {status} (Content-Range "
                                   f"{response.headers.get('Content-Range')!r}) for a resume at byte {have}")
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        received = start
        name = os.path.basename(part)[: -len(".part")]
        with open(part, mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=name, disable=not progress,
                                         leave=False) as bar:
            for block in response.iter_content(chunk_size=_NET_CHUNK):
                f.write(block)
                received += len(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
        return total is None or received >= total


def _content_range_start(response):
    """First byte position of a ``Content-Range: bytes a-b/n`` header, or None."""
    value = response.headers.get("Content-Range", "")
    if not value.startswith("bytes "):
        return None
    try:
        return int(value[len("bytes "):].split("-", 1)[0])
    except ValueError:
        return None
