import pytest
from conftest import free_port

from vap import storage
from vap.errors import StorageError


@pytest.mark.parametrize("uri", ["ftp://x/y", "s3://", "file://relative/dir", ""])
def test_bad_uris_name_the_fix(uri):
    with pytest.raises(StorageError) as err:
        storage.parse_uri(uri)
    assert "s3://" in str(err.value) or "file:" in str(err.value) or "path" in str(err.value)


def test_parse_and_join():
    assert storage.parse_uri("s3://b/p/q/").path == "p/q"
    assert storage.join("s3://b/p", "x", "y/") == "s3://b/p/x/y"
    assert storage.join("s3://b", "x") == "s3://b/x"
    assert storage.parse_uri("file:///tmp/a").uri == "/tmp/a"


def _roundtrip(root: str, tmp_path):
    target = storage.join(root, "dir", "obj.bin")
    storage.write_bytes(target, b"hello")
    assert storage.exists(target) and storage.exists(storage.join(root, "dir"))
    assert storage.read_bytes(target) == b"hello"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True, exist_ok=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    storage.upload_dir(src, storage.join(root, "tree"))
    assert storage.list_files(storage.join(root, "tree")) == ["a.txt", "sub/b.txt"]
    local = storage.materialize(storage.join(root, "tree"), tmp_path / "cache")
    assert (local / "sub" / "b.txt").read_text() == "b"
    storage.remove(storage.join(root, "tree"))
    assert storage.list_files(storage.join(root, "tree")) == []
    with pytest.raises(StorageError, match="no such"):
        storage.read_bytes(storage.join(root, "missing"))


def test_local_storage(tmp_path):
    _roundtrip(str(tmp_path / "store"), tmp_path)
    _roundtrip(f"file://{tmp_path}/store2", tmp_path)


def test_s3_storage_over_http(s3_bucket, tmp_path):
    _roundtrip(s3_bucket + "/prefix", tmp_path)


def test_s3_directory_markers_are_not_files(s3_bucket, tmp_path):
    # pyarrow (Ray's checkpoint upload) writes empty "dir/" objects; they must not be downloaded as files
    loc = storage.parse_uri(s3_bucket)
    storage.s3_client().put_object(Bucket=loc.bucket, Key="ckpt/expert/", Body=b"")
    storage.write_bytes(f"{s3_bucket}/ckpt/expert/model.safetensors", b"w")
    assert storage.list_files(f"{s3_bucket}/ckpt/expert") == ["model.safetensors"]
    assert (storage.download_dir(f"{s3_bucket}/ckpt/expert", tmp_path / "e") / "model.safetensors").read_bytes() == b"w"


def test_s3_missing_bucket(s3_server):
    with pytest.raises(StorageError, match="bucket does not exist"):
        storage.write_bytes("s3://no-such-bucket/x", b"1")


def test_unreachable_endpoint_names_endpoint_and_fix(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    with pytest.raises(StorageError) as err:
        storage.read_bytes("s3://bucket/key")
    assert url in str(err.value) and "AWS_ENDPOINT_URL" in str(err.value)
