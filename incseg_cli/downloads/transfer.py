"""One file over HTTP(S): resumed where it stopped, checked against its checksum.

pooch's ``retrieve`` and torchvision's ``download_url`` stream into a fresh temporary file and
start again from zero after any failure. On a 19 GB COCO zip over a link that drops, that is
hours lost per drop. Here the transfer (redirects, proxies, TLS, chunked bodies) is
``requests``'s; what this module adds is the resume: bytes go to ``<file>.part``, kept across
failures and interruptions, and the next attempt (or the next run of the command) asks for
the rest with an HTTP ``Range`` header. A server that ignores ``Range`` (answers 200) gets a
clean restart. Only a complete file whose checksum matches is renamed to its final name, so
a file under that name is always whole and verified.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from incseg_cli.console import ProgressBar, log, warn
from incseg_cli.errors import CorruptFileError, DownloadError, UsageError
from incseg_cli.fileio import fsync_path, output_errors

CHUNK = 1 << 16  # what a dropped connection can lose of the block being read
MB = 1_000_000
PART_SUFFIX = ".part"
# A stalled server: no byte for this long fails the attempt (the next one resumes).
READ_TIMEOUT_S = 60.0
RETRIES = 4
BACKOFF_S = 1.0  # doubled after every failed attempt

ALGORITHMS = ("md5", "sha1", "sha256", "sha256-prefix")


@dataclass(frozen=True)
class Digest:
    """The digests of one file: ``sha256`` always (the record's), ``checked`` the one its
    published checksum names."""

    sha256: str
    checked: str | None


def parse_checksum(checksum: str) -> tuple[str, str]:
    alg, _, value = checksum.partition(":")
    if alg not in ALGORITHMS or not value or any(c not in "0123456789abcdef" for c in value.lower()):
        raise UsageError(f"checksum {checksum!r}: expected one of {', '.join(ALGORITHMS)}, a colon and hex digits")
    return alg, value.lower()


def file_digest(path: Path, checksum: str | None) -> Digest:
    """SHA-256 of ``path`` and, in the same pass, the digest ``checksum`` names."""
    sha256 = hashlib.sha256()
    other = None
    if checksum is not None:
        alg = parse_checksum(checksum)[0]
        if alg in ("md5", "sha1"):
            other = hashlib.new(alg)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            sha256.update(block)
            if other is not None:
                other.update(block)
    return Digest(sha256.hexdigest(), other.hexdigest() if other is not None else None)


def mismatch(digest: Digest, checksum: str | None, recorded_sha256: str | None) -> str | None:
    """Why ``digest`` is not the expected file (None: it is)."""
    if checksum is not None:
        alg, want = parse_checksum(checksum)
        got = digest.checked if alg in ("md5", "sha1") else digest.sha256
        ok = got.startswith(want) if alg == "sha256-prefix" else got == want
        if not ok:
            shown = got[: len(want)] if alg == "sha256-prefix" else got
            return f"{alg.replace('-prefix', '')} is {shown}, the published one is {want}"
    if recorded_sha256 is not None and digest.sha256 != recorded_sha256:
        return (f"sha256 is {digest.sha256}, the first download into this root had {recorded_sha256} "
                "(incseg-downloads.json)")
    return None


def _session():
    import requests  # here: only `incseg download` pays its import

    session = requests.Session()
    session.headers["User-Agent"] = "incseg-download"
    return session


def _network_errors() -> tuple[type[BaseException], ...]:
    import requests

    return (requests.exceptions.RequestException, ConnectionError, TimeoutError)


def _content_range_start(value: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes A-B/N`` answer."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _attempt(session, url: str, part: Path, bar_name: str, expected_size: int) -> int:
    """One request: appends to ``part`` from its current size (restarts it when the server
    ignores Range). Returns the total size the server announced (0: unknown)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with session.get(url, headers=headers, stream=True, timeout=(30, READ_TIMEOUT_S)) as response:
        if response.status_code == 416 and offset:  # nothing after offset: the part may be whole
            return offset
        if response.status_code >= 400:
            raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}")
        length = int(response.headers.get("Content-Length") or 0)
        if response.status_code == 206 and _content_range_start(response.headers.get("Content-Range")) == offset:
            total = offset + length if length else 0
            mode = "ab"
        else:
            if offset:
                log(f"{bar_name}: the server does not resume (HTTP {response.status_code}); starting again")
            offset, total, mode = 0, length, "wb"
        size_mb = -(-(total or expected_size) // MB)
        with output_errors(part), open(part, mode) as fh, \
                ProgressBar(size_mb, f"{bar_name} (MB)", done=offset // MB, unit="MB") as bar:
            counted = offset // MB
            written = offset
            for block in response.iter_content(CHUNK):
                fh.write(block)
                written += len(block)
                if written // MB > counted:
                    bar.advance(written // MB - counted)
                    counted = written // MB
            fh.flush()
            os.fsync(fh.fileno())
        if total and written != total:  # a body cut short without an error from the library
            raise ConnectionError(f"the connection ended after {written:,} of {total:,} bytes")
        return total


def download(url: str, dest: Path, checksum: str | None, recorded_sha256: str | None = None,
             expected_size: int = 0, retries: int | None = None, backoff_s: float | None = None) -> Digest:
    """``url`` into ``dest`` (resuming ``dest.part``); returns its digests once it matches
    ``checksum`` and ``recorded_sha256``. A mismatch removes the bytes and raises
    CorruptFileError; a network failure keeps them and raises DownloadError (rerun resumes)."""
    retries = RETRIES if retries is None else retries
    backoff_s = BACKOFF_S if backoff_s is None else backoff_s
    part = dest.with_name(dest.name + PART_SUFFIX)
    with output_errors(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
    session = _session()
    errors = _network_errors()
    total = 0
    for attempt in range(retries + 1):
        try:
            total = _attempt(session, url, part, dest.name, expected_size)
            break
        except errors as err:
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadError(
                    f"{url}: {_short(err)}; {have:,} bytes kept in {part}, rerun the same command to resume"
                ) from None
            wait = backoff_s * 2 ** attempt
            warn(f"{dest.name}: {_short(err)} after {have:,} bytes; resuming in {wait:g} s "
                 f"(attempt {attempt + 2} of {retries + 1})")
            time.sleep(wait)
    size = part.stat().st_size
    if total and size != total:
        part.unlink()
        raise CorruptFileError(f"{url}: {size:,} bytes received, the server announced {total:,}; removed, rerun")
    digest = file_digest(part, checksum)
    why = mismatch(digest, checksum, recorded_sha256)
    if why is not None:
        part.unlink()
        raise CorruptFileError(f"{url}: the downloaded {dest.name} is not the expected file ({why}); "
                               "removed and not used; check --mirror, or rerun to download it again")
    with output_errors(dest):
        os.replace(part, dest)
        fsync_path(dest.parent)
    return digest


def _short(err: BaseException) -> str:
    """One line for a network error (requests' messages nest the whole exception chain)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."
