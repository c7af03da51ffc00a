"""The driver/worker seam without a cluster: the project error a worker raised is found — in
the record beside the checkpoints, or inside Ray's WorkerGroupError — and raised as is."""

from ray.train.v2.api.exceptions import WorkerGroupError

from vap import storage
from vap.errors import DataError, StorageError
from vap.training import trainer


def test_the_workers_project_error_is_found_in_rays_error(tmp_path):
    corrupt = DataError("shard.00000.mds.zstd: checksum mismatch; rebuild the snapshot")
    ray_err = WorkerGroupError("rank 1 failed", {0: RuntimeError("gloo: connection closed"), 1: corrupt})
    assert trainer._worker_error(str(tmp_path), ray_err) is corrupt
    assert trainer._worker_error(str(tmp_path), WorkerGroupError("x", {0: RuntimeError("oom")})) is None


def test_the_record_beside_the_checkpoints_wins_and_keeps_its_type(tmp_path):
    root = str(tmp_path)
    trainer._record_worker_error(root, StorageError("s3://b/runs: S3 error 503; retry later"))
    found = trainer._worker_error(root, RuntimeError("Ray's text"))
    assert type(found) is StorageError and str(found) == "s3://b/runs: S3 error 503; retry later"
    storage.write_bytes(storage.join(root, trainer.WORKER_ERROR), b'{"type": "os", "message": "no"}')
    assert trainer._worker_error(root, RuntimeError()) is None  # only project error types are raised
