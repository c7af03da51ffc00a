"""A job's lease: one `vap train` of a job at a time, and a crashed holder blocks nobody for long.

The lease is a small JSON object beside the job's checkpoints, `<storage.uri>/<job>/.vap-lease.json`,
naming its holder (host, pid, user) and when it expires. Taking it is a compare-and-swap on that
object — on S3 a conditional put (`If-None-Match: *` for a new lease, `If-Match: <ETag>` to take
over an expired one or renew ours), on a local file system the same decision under an exclusive
`flock` — so of two `vap train` started together exactly one wins; the other is refused with one
line naming the holder. The holder renews the lease every `ttl / 3` from a background thread
while it trains and deletes it when done; if it dies, the lease expires `ttl` seconds after its
last renewal and the next `vap train` takes it over (and resumes from the last checkpoint).
Expiry compares wall clocks of the hosts involved: keep them in sync (NTP), as Kubernetes does.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vap import storage
from vap.errors import LeaseError, StorageError

log = logging.getLogger(__name__)

LEASE = ".vap-lease.json"
TTL = 90.0  # seconds a lease outlives its holder's last renewal (a restarted job waits at most this)
_DELETE = object()  # what a decision returns to remove the lease


def lease_uri(storage_uri: str, job: str) -> str:
    return storage.join(storage_uri, job, LEASE)


def user_name() -> str:
    """The login name, or "unknown" in a container whose uid has no passwd entry."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _holder() -> str:
    return f"{socket.gethostname()} pid {os.getpid()} (user {user_name()})"


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class Lease:
    """A lease this process holds."""

    uri: str
    job: str
    ttl: float = TTL
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    holder: str = field(default_factory=_holder)
    acquired: float = field(default_factory=time.time)

    def record(self) -> dict:
        now = time.time()
        return {"job": self.job, "holder": self.holder, "token": self.token, "acquired": _stamp(self.acquired),
                "renewed": _stamp(now), "expires": now + self.ttl}

    def renew(self) -> None:
        """Push the expiry `ttl` seconds ahead; LeaseError if another process has taken it over."""
        def decide(current: dict | None):
            if current is None or current.get("token") != self.token:
                raise LeaseError(f"{self.uri}: the lease of job {self.job} was taken over by "
                                 f"{(current or {}).get('holder', 'nobody')}; this run no longer holds it")
            return self.record()

        _swap(self.uri, decide)

    def release(self) -> None:
        """Delete the lease if it is still ours."""
        _swap(self.uri, lambda current: _DELETE if current and current.get("token") == self.token else None)


def acquire(storage_uri: str, job: str, ttl: float = TTL) -> Lease:
    """Take the lease of `job`; LeaseError naming the holder if a live one exists."""
    lease = Lease(lease_uri(storage_uri, job), job, ttl)

    def decide(current: dict | None):
        if current and current.get("token") != lease.token:
            left = float(current.get("expires", 0)) - time.time()
            if left > 0:
                raise LeaseError(
                    f"job {job} is already being trained by {current.get('holder', 'another process')} since "
                    f"{current.get('acquired', '?')} (lease {lease.uri}, expires in {left:.0f}s unless renewed); "
                    "wait for that run to finish, or if it is gone, wait for the lease to expire")
            log.warning("taking over the expired lease of job %s from %s (expired %.0fs ago)",
                        job, current.get("holder"), -left)
        return lease.record()

    _swap(lease.uri, decide)
    log.info("job %s: lease %s taken (%s, renewed every %.0fs)", job, lease.uri, lease.holder, ttl / 3)
    return lease


@contextlib.contextmanager
def hold(storage_uri: str, job: str, ttl: float = TTL) -> Iterator[Lease]:
    """Hold the lease of `job` for the block: renewed in the background, released at the end."""
    lease = acquire(storage_uri, job, ttl)
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(ttl / 3):
            try:
                lease.renew()
            except LeaseError as err:
                log.error("%s", err)
                return
            except StorageError as err:  # a blip of the store: the lease has ttl to spare
                log.warning("could not renew the lease of job %s: %s", job, err)

    renewer = threading.Thread(target=keep, name=f"vap-lease-{job}", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join(timeout=10)
        try:
            lease.release()
        except StorageError as err:
            log.warning("could not release the lease of job %s (it expires in %.0fs): %s", job, ttl, err)


# --- compare-and-swap on the lease object -------------------------------------------------
def _swap(uri: str, decide: Callable[[dict | None], object]) -> None:
    """Read the lease, let `decide` return the new record (or None: leave it, _DELETE: remove
    it), and write that only if nobody changed the lease in between."""
    loc = storage.parse_uri(uri)
    if loc.scheme == "file":
        _swap_local(Path(loc.path), uri, decide)
    else:
        _swap_s3(loc, uri, decide)


def _parse(data: bytes, uri: str) -> dict:
    try:
        record = json.loads(data)
        assert isinstance(record, dict)
        return record
    except (ValueError, AssertionError):
        log.warning("%s is not a lease record: treating it as expired", uri)
        return {}


def _swap_local(path: Path, uri: str, decide) -> None:
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 - held for the whole swap
    except OSError as err:
        raise StorageError(f"{uri}: cannot take the job's lease ({err.strerror}); check that storage.uri "
                           "is writable") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = _parse(path.read_bytes(), uri) if path.exists() else None
        new = decide(current)
        if new is _DELETE:
            path.unlink(missing_ok=True)
        elif new is not None:
            storage.write_bytes(uri, json.dumps(new).encode())


def _swap_s3(loc: storage.Location, uri: str, decide, attempts: int = 3) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = storage.s3_client()
    for _ in range(attempts):
        try:
            try:
                got = s3.get_object(Bucket=loc.bucket, Key=loc.path)
                current, etag = _parse(got["Body"].read(), uri), got["ETag"]
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                    raise
                current, etag = None, None
            new = decide(current)
            if new is None:
                return
            if new is _DELETE:
                s3.delete_object(Bucket=loc.bucket, Key=loc.path, IfMatch=etag)
            else:
                cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
                s3.put_object(Bucket=loc.bucket, Key=loc.path, Body=json.dumps(new).encode(), **cond)
            return
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                continue  # someone changed the lease between our read and write: decide again
            raise storage._s3_error(err, uri) from None
        except BotoCoreError as err:
            raise storage._s3_error(err, uri) from None
    raise LeaseError(f"{uri}: the lease kept changing while it was being taken; retry")
