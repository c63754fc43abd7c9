"""The project's exceptions, by meaning.

Every failure a user can cause or meet is one of these classes, each with a stable snake_case `code` (logged,
recorded by the watcher, and a label of its metrics) and a one-line message that names the cause. What a
failure means to a transport is decided at that transport's edge, once: exit codes in the command layer's
table (`nexusml.command.cli.EXIT_CODES`), HTTP statuses in the proxy's (`proxy.errors.HTTP_STATUS`).
Third-party errors are converted where they are caught, with `raise ... from err`.
"""

from __future__ import annotations


class NexusError(Exception):
    """Base class: a failure with a one-line message that names its cause."""

    code: str = "internal_error"


class SettingsError(NexusError):
    """An environment variable has a value the process cannot use."""

    code = "bad_settings"


class MetadataError(NexusError):
    """`.nexus_meta.json` is missing, not JSON, or breaks its schema."""

    code = "bad_metadata"


class ArtifactNotFound(NexusError):
    """The bucket or the object the metadata names does not exist."""

    code = "artifact_not_found"


class AccessDenied(NexusError):
    """S3 refused the credentials, or none were found."""

    code = "access_denied"


class EndpointUnreachable(NexusError):
    """The S3 endpoint could not be reached, even after retries."""

    code = "unreachable"


class IntegrityError(NexusError):
    """The downloaded bytes do not match the metadata's size or sha256, or changed while downloading."""

    code = "integrity"


class UnsafeArchive(NexusError):
    """An archive member would escape its target, is not a plain file, or the archive is over the cap."""

    code = "unsafe_archive"


class DiskError(NexusError):
    """Writing the model repository failed: disk full, read-only, or permission denied."""

    code = "disk"


class ServerError(NexusError):
    """A server process (tritonserver, the local S3) failed to start or died, or Triton did not answer."""

    code = "server"


class ModelLoadFailed(NexusError):
    """Triton could not load a new model version (its code, its artifact, or its config is broken)."""

    code = "load"


class SmokeTestFailed(NexusError):
    """A new model version loaded but its test inference failed or answered the wrong shape, type or values."""

    code = "smoke_test"
