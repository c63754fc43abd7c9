"""An S3 prefix of metadata, followed as a local directory that the whole data plane reads.

`WATCH_META_URI=s3://bucket/prefix/` names many models' metadata, one `*.json` object each directly under the
prefix. `nexus sync` (before it installs) and `nexus watch` (each poll) copy them into the `NEXUS_META_PATH`
directory: one listing, then a GET for each object whose ETag this process has not mirrored yet. From there
everything goes as with a directory written by hand: the sync installs every model before Triton starts, the
watcher's catalog follows the files, and the proxy, which holds no S3 credentials, serves exactly those models; a
model removed from the prefix leaves the directory and then the data plane.

A file is written whole (a dot-named temporary renamed over it), and rewritten only when its bytes changed, so a
restarted watcher does not touch what it already mirrored. The directory belongs to the mirror: a `*.json` in it that
the prefix does not hold is removed, except when the listing is empty, which removes nothing (a prefix emptied and
filled again by the control plane: `nexusml.core.catalog` keeps the same rule). One object that cannot be mirrored
(refused, too large, a name the filesystem takes no file by) is skipped, its file left as it was, and said once;
the others are mirrored (`failures` names the skipped). A listing that fails, or a directory that cannot be written,
stops a pull.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

from nexusml.core import catalog
from nexusml.core.errors import DiskError, NexusError
from nexusml.sync import storage
from nexusml.sync.settings import SyncSettings

log = logging.getLogger(__name__)

# A metadata object above this is skipped: metadata is a few hundred bytes, and the mirror must not fill the
# directory (a size-limited emptyDir in the chart) with whatever lands under the prefix.
MAX_OBJECT_BYTES = 64 << 10
# A write that fails with these is the object's name (too long, or one the filesystem refuses): that object is
# skipped. Any other error is the directory's (full, read-only, permissions) and stops the pull.
NAME_ERRORS = frozenset({errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ, errno.EISDIR})


def is_prefix(uri: str | None) -> bool:
    """Whether `WATCH_META_URI` names a prefix of many models (it ends with a slash) rather than one object."""
    return uri is not None and uri.endswith("/")


class S3Mirror:
    """The `*.json` objects directly under `settings.meta_uri`, copied into `settings.meta_path` by `pull`."""

    def __init__(self, uri: str, settings: SyncSettings) -> None:
        self.prefix = storage.locate(uri, settings.s3.model_bucket)
        self.directory = settings.meta_path
        self.endpoint = settings.s3.endpoint_url
        self.client = storage.client(settings.s3)
        self.etags: dict[str, str] = {}  # file name -> ETag of the object last mirrored into it
        self.skipped: dict[str, str] = {}  # file name -> ETag of an object not mirrored, said once
        self.failures: dict[str, NexusError] = {}  # file name -> why the last pull did not mirror its object

    def pull(self) -> bool:
        """Bring the directory in line with the prefix; whether a file was written or removed. Raises `NexusError`
        when the listing fails (nothing changed) or the directory cannot be written (each file whole, some perhaps
        not yet brought in line)."""
        listed = self._list()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DiskError(f"{self.directory}: cannot create the metadata directory ({err})") from err
        changed = False
        self.failures = {}
        for name, (key, etag, size) in listed.items():
            if self.etags.get(name) == etag and (self.directory / name).is_file():
                continue
            try:
                if size > MAX_OBJECT_BYTES:
                    raise NexusError(f"{self._uri(key)}: {size} bytes, more than metadata's {MAX_OBJECT_BYTES}")
                changed |= self._write(name, self._get(key))
            except (NexusError, ValueError, OSError) as err:
                if isinstance(err, OSError) and err.errno not in NAME_ERRORS:
                    raise DiskError(f"{self.directory / name}: cannot write the mirrored metadata ({err})") from err
                self.failures[name] = err if isinstance(err, NexusError) else NexusError(f"{self._uri(key)}: {err}")
                if self.skipped.get(name) != etag:
                    log.warning("%s not mirrored: %s; %s left as it was", self._uri(key), err, self.directory / name)
                    self.skipped[name] = etag
                continue
            self.etags[name] = etag
            self.skipped.pop(name, None)
        if listed:  # an empty listing removes nothing
            for path in catalog.listing(self.directory):
                if path.name not in listed:
                    changed |= self._remove(path)
        return changed

    def _uri(self, key: str) -> str:
        return str(storage.ObjectLocation(self.prefix.bucket, key))

    def _list(self) -> dict[str, tuple[str, str, int]]:
        """File name -> (key, ETag, size) of each `*.json` object directly under the prefix, hidden names left out."""
        found: dict[str, tuple[str, str, int]] = {}
        with storage.s3_errors(self.prefix, self.endpoint):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.prefix.bucket, Prefix=self.prefix.key, Delimiter="/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix.key) :]
                    if name.endswith(catalog.SUFFIX) and not name.startswith("."):
                        found[name] = (item["Key"], str(item.get("ETag", "")), int(item.get("Size", 0)))
        return found

    def _get(self, key: str) -> bytes:
        location = storage.ObjectLocation(self.prefix.bucket, key)
        with storage.s3_errors(location, self.endpoint):
            got: Any = self.client.get_object(Bucket=location.bucket, Key=location.key)
            body: bytes = got["Body"].read(MAX_OBJECT_BYTES + 1)
        if len(body) > MAX_OBJECT_BYTES:  # grew after the listing
            raise NexusError(f"more than metadata's {MAX_OBJECT_BYTES} bytes")
        return body

    def _write(self, name: str, body: bytes) -> bool:
        target = self.directory / name
        if target.is_file() and target.read_bytes() == body:
            return False
        temporary = self.directory / f".{name}.mirror"
        try:
            temporary.write_bytes(body)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        log.info("%s mirrored from %s", target, self._uri(self.prefix.key + name))
        return True

    def _remove(self, path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            raise DiskError(f"{path}: cannot remove metadata gone from the prefix ({err})") from err
        self.etags.pop(path.name, None)
        log.info("%s removed: no longer under %s", path, self.prefix)
        return True
