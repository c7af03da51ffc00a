"""Storage by URI: a local path, ``file://`` or ``s3://`` (any S3-compatible endpoint).

The endpoint comes from the standard variables: ``AWS_ENDPOINT_URL`` (boto3),
``S3_ENDPOINT_URL`` (MosaicML Streaming), ``MLFLOW_S3_ENDPOINT_URL`` (MLflow artifacts);
`sync_endpoint_env` fills the last two from the first. Credentials come from the usual AWS
chain and never appear in messages.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from vap.errors import StorageError


@dataclass(frozen=True)
class Location:
    scheme: str  # "file" or "s3"
    bucket: str  # "" for file
    path: str  # absolute path (file) or key prefix without leading slash (s3)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.path}".rstrip("/") if self.scheme == "s3" else self.path


def parse_uri(uri: str) -> Location:
    """Parse a path / file:// / s3:// URI; raise StorageError naming the URI and the fix."""
    uri = str(uri)
    if not uri:
        raise StorageError("empty storage URI: give a path, file:///abs/path or s3://bucket/prefix")
    if "://" not in uri:
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri):
            # s3:/x or s3:x would otherwise be a local folder named "s3:"
            scheme = uri.split(":", 1)[0]
            raise StorageError(f"{uri[:80]}: looks like a {scheme} URI without '//'; write {scheme}://… "
                               f"(e.g. s3://bucket/prefix), or ./{uri[:40]} for a local folder of that name")
        return Location("file", "", str(Path(uri).expanduser().absolute()))
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost", "."):
            # file://relative/dir is a common slip: netloc swallows the first segment
            raise StorageError(f"{uri}: file URIs are file:///absolute/path (three slashes) or a plain path")
        path = parsed.path if parsed.netloc != "." else "." + parsed.path
        return Location("file", "", str(Path(path).expanduser().absolute()))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{uri}: an s3 URI names a bucket: s3://bucket/prefix")
        return Location("s3", parsed.netloc, parsed.path.lstrip("/").rstrip("/"))
    raise StorageError(f"{uri}: unsupported scheme '{parsed.scheme}://'; use a path, file:// or s3://")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB blocks (checkpoint manifests, registered experts)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_storage_location(value: str) -> bool:
    """The one rule for a model source (a backbone): a URI, a path-looking string ('.', '/', '~')
    or an existing folder is storage; anything else is a Hugging Face hub id ("org/name")."""
    return "://" in value or value.startswith((".", "/", "~")) or Path(value).expanduser().exists()


def join(uri: str, *parts: str) -> str:
    loc = parse_uri(uri)
    tail = "/".join(p.strip("/") for p in parts if p)
    if loc.scheme == "file":
        return str(Path(loc.path, tail)) if tail else loc.path
    return f"s3://{loc.bucket}/" + "/".join(p for p in (loc.path, tail) if p)


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")


def sync_endpoint_env() -> None:
    """Let Streaming and MLflow reach the same S3 endpoint boto3 uses."""
    url = endpoint_url()
    if url:
        os.environ.setdefault("S3_ENDPOINT_URL", url)
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", url)


@functools.cache
def _client(endpoint: str | None):
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


def s3_client():
    return _client(endpoint_url())


def _s3_error(err: Exception, uri: str) -> StorageError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = endpoint_url() or "the default AWS endpoint"
    if isinstance(err, EndpointConnectionError):
        return StorageError(f"{uri}: cannot reach S3 endpoint {where}; start it or set AWS_ENDPOINT_URL")
    if isinstance(err, NoCredentialsError):
        return StorageError(f"{uri}: no S3 credentials; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return StorageError(f"{uri}: bucket does not exist at {where}; create it first")
        if code in ("NoSuchKey", "404"):
            return StorageError(f"{uri}: no such object")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"{uri}: access denied ({code}); check the S3 credentials")
        return StorageError(f"{uri}: S3 error {code} at {where}")
    return StorageError(f"{uri}: {err}")


def _local_error(err: OSError, uri: str, action: str) -> StorageError:
    import errno

    fix = {errno.EACCES: "check its permissions or choose another location",
           errno.EPERM: "check its permissions or choose another location",
           errno.EROFS: "the file system is read-only; choose a writable location",
           errno.ENOSPC: "the disk is full; free space or choose another location",
           errno.EDQUOT: "the disk quota is exceeded; free space or choose another location",
           errno.ENOENT: "check the path", errno.ENOTDIR: "a parent of it is a file, not a folder; check the path",
           errno.EISDIR: "it is a folder; name a file"}.get(err.errno, "check the path and its permissions")
    where = f" ({err.filename})" if err.filename and str(err.filename) != uri else ""
    return StorageError(f"{uri}: cannot {action}{where}: {err.strerror or err}; {fix}")


def _s3_call(uri: str, fn):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn()
    except (BotoCoreError, ClientError) as err:
        raise _s3_error(err, uri) from None


def exists(uri: str) -> bool:
    loc = parse_uri(uri)
    if loc.scheme == "file":
        return Path(loc.path).exists()
    from botocore.exceptions import ClientError

    try:
        s3_client().head_object(Bucket=loc.bucket, Key=loc.path)
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return bool(list_files(uri, limit=1))  # a "directory" prefix
        raise _s3_error(err, uri) from None
    except Exception as err:  # connection errors
        raise _s3_error(err, uri) from None


def read_bytes(uri: str) -> bytes:
    loc = parse_uri(uri)
    if loc.scheme == "file":
        try:
            return Path(loc.path).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{uri}: no such file") from None
        except OSError as err:
            raise _local_error(err, uri, "read") from None
    return _s3_call(uri, lambda: s3_client().get_object(Bucket=loc.bucket, Key=loc.path)["Body"].read())


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: readers see the old object or the whole new one, never a part."""
    loc = parse_uri(uri)
    if loc.scheme == "file":
        path = Path(loc.path)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as err:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            raise _local_error(err, uri, "write") from None
        return
    _s3_call(uri, lambda: s3_client().put_object(Bucket=loc.bucket, Key=loc.path, Body=data))


def probe_writable(uri: str) -> None:
    """Write and remove a probe object under `uri`: StorageError naming it if that fails."""
    probe = join(uri, f".vap-write-probe-{os.getpid()}")
    write_bytes(probe, b"ok")
    remove(probe)


def list_files(uri: str, limit: int | None = None) -> list[str]:
    """Relative names of all files under a prefix (recursive), sorted."""
    loc = parse_uri(uri)
    if loc.scheme == "file":
        root = Path(loc.path)
        if not root.is_dir():
            return []
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        return names[:limit] if limit else names
    prefix = loc.path + "/" if loc.path else ""
    names: list[str] = []
    paginator = s3_client().get_paginator("list_objects_v2")

    def _list():
        for page in paginator.paginate(Bucket=loc.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):  # a "directory" marker (pyarrow writes them), not a file
                    continue
                names.append(obj["Key"][len(prefix):])
                if limit and len(names) >= limit:
                    return

    _s3_call(uri, _list)
    return sorted(names)


def upload_dir(local_dir: str | Path, uri: str) -> None:
    local_dir = Path(local_dir)
    loc = parse_uri(uri)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    if loc.scheme == "file":
        try:
            shutil.copytree(local_dir, loc.path, dirs_exist_ok=True)
        except shutil.Error as err:  # copytree gathers the files it could not copy
            _, dest, why = err.args[0][0]
            raise StorageError(f"{uri}: cannot write ({dest}): {why}; check its permissions or choose "
                               "another location") from None
        except OSError as err:
            raise _local_error(err, uri, "write") from None
        return
    for p in files:
        key = "/".join(x for x in (loc.path, str(p.relative_to(local_dir))) if x)
        _s3_call(uri, lambda p=p, key=key: s3_client().upload_file(str(p), loc.bucket, key))


def download_dir(uri: str, local_dir: str | Path) -> Path:
    local_dir = Path(local_dir)
    loc = parse_uri(uri)
    if loc.scheme == "file":
        if not Path(loc.path).is_dir():
            raise StorageError(f"{uri}: no such directory")
        shutil.copytree(loc.path, local_dir, dirs_exist_ok=True)
        return local_dir
    names = list_files(uri)
    if not names:
        raise StorageError(f"{uri}: nothing stored under this prefix")
    for name in names:
        dest = local_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        key = "/".join(x for x in (loc.path, name) if x)
        _s3_call(uri, lambda key=key, dest=dest: s3_client().download_file(loc.bucket, key, str(dest)))
    return local_dir


def materialize(uri: str, cache_dir: str | Path | None = None) -> Path:
    """A local folder holding the tree at `uri` (the folder itself for local URIs)."""
    loc = parse_uri(uri)
    if loc.scheme == "file":
        return Path(loc.path)
    cache = Path(cache_dir or os.environ.get("VAP_CACHE", Path.home() / ".cache" / "vap"))
    dest = cache / "s3" / loc.bucket / loc.path
    marker = dest / ".vap-complete"
    if not marker.exists():
        download_dir(uri, dest)
        marker.touch()
    return dest


def remove(uri: str) -> None:
    loc = parse_uri(uri)
    if loc.scheme == "file":
        p = Path(loc.path)
        try:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        except OSError as err:
            raise _local_error(err, uri, "remove") from None
        return
    for name in list_files(uri):
        key = "/".join(x for x in (loc.path, name) if x)
        _s3_call(uri, lambda key=key: s3_client().delete_object(Bucket=loc.bucket, Key=key))


def pyarrow_fs(uri: str):
    """(filesystem, path) for Ray Train's RunConfig(storage_filesystem=…, storage_path=…)."""
    import pyarrow.fs

    loc = parse_uri(uri)
    if loc.scheme == "file":
        try:
            Path(loc.path).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _local_error(err, uri, "create the folder") from None
        return pyarrow.fs.LocalFileSystem(), loc.path
    kwargs = {}
    if endpoint_url():
        parsed = urlparse(endpoint_url())
        kwargs = {"endpoint_override": parsed.netloc, "scheme": parsed.scheme or "https"}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pyarrow.fs.S3FileSystem(**kwargs), f"{loc.bucket}/{loc.path}".rstrip("/")
