"""User-facing errors: each names the bad input and how to fix it.

Library code raises these; the CLI prints the message as one line and exits non-zero
(no traceback). Anything else escaping is a bug and keeps its traceback.
"""


class VapError(Exception):
    """Base class of errors a user can fix. ``str(err)`` is the whole message."""

    exit_code = 2


class SpecError(VapError):
    """The job spec is malformed (unknown key, wrong type, impossible value)."""


class StorageError(VapError):
    """A storage URI is wrong, unreachable, or the object is missing."""


class RegistryError(VapError):
    """The MLflow tracking server is unreachable or a model / alias is missing."""


class DataError(VapError):
    """Input data (a clip, a caption, a manifest, a shard) is unusable."""


class ModelError(VapError):
    """A backbone / expert checkpoint does not fit the requested model."""


class TrainingError(VapError):
    """The distributed training run failed; the message says where its logs are."""


class KubeError(VapError):
    """Rendering, validating or submitting Kubernetes objects failed; the message says why."""


class LeaseError(VapError):
    """Another process holds the job (its lease has not expired); the message names it."""
