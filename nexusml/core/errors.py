"""The project's exceptions.

Every failure a user can cause or meet is one of these classes. Each carries the process exit code the
command-line tools return for it and the HTTP status and stable error code the proxy answers with; the
mapping to an exit code lives in `nexusml.command.cli`, the mapping to an HTTP body in the proxy's middleware.
Third-party errors are converted where they are caught, with `raise ... from err`.
"""

from __future__ import annotations


class NexusError(Exception):
    """Base class: a failure with a one-line message that names its cause."""

    exit_code: int = 1
    http_status: int = 500
    code: str = "internal_error"


class SettingsError(NexusError):
    """An environment variable has a value the process cannot use."""

    exit_code = 2
    code = "bad_settings"


class MetadataError(NexusError):
    """`.nexus_meta.json` is missing, not JSON, or breaks its schema."""

    exit_code = 3
    http_status = 400
    code = "bad_metadata"


class ArtifactNotFound(NexusError):
    """The bucket or the object the metadata names does not exist."""

    exit_code = 4
    http_status = 404
    code = "not_found"


class AccessDenied(NexusError):
    """S3 refused the credentials, or none were found."""

    exit_code = 5
    http_status = 403
    code = "access_denied"


class EndpointUnreachable(NexusError):
    """The S3 endpoint could not be reached, even after retries."""

    exit_code = 6
    http_status = 503
    code = "unreachable"


class IntegrityError(NexusError):
    """The downloaded bytes do not match the metadata's size or sha256, or changed while downloading."""

    exit_code = 7
    http_status = 502
    code = "integrity"


class UnsafeArchive(NexusError):
    """An archive member would escape its target, is not a plain file, or the archive is over the cap."""

    exit_code = 8
    http_status = 422
    code = "unsafe_archive"


class DiskError(NexusError):
    """Writing the model repository failed: disk full, read-only, or permission denied."""

    exit_code = 9
    code = "disk"


class ServerError(NexusError):
    """A server process (tritonserver, the local S3) failed to start or died."""

    exit_code = 10
    http_status = 503
    code = "server"


class ModelLoadFailed(NexusError):
    """Triton could not load a new model version (its code, its artifact, or its config is broken)."""

    exit_code = 11
    http_status = 502
    code = "load"


class SmokeTestFailed(NexusError):
    """A new model version loaded but its test inference failed or answered the wrong shape, type or values."""

    exit_code = 12
    http_status = 502
    code = "smoke_test"
