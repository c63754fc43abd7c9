"""An S3 prefix of metadata, followed as a local directory that the whole data plane reads.

`WATCH_META_URI=s3://bucket/prefix/` names many models' metadata, one `*.json` object each directly under the
prefix. Each poll the watcher copies them into the `NEXUS_META_PATH` directory (one listing; a GET only for an object
whose ETag changed), and from there everything goes as with a directory written by hand: the watcher's catalog, the
sync and the proxy read the same files. So the proxy, which holds no S3 credentials, serves exactly the models the
watcher follows, and a model removed from the prefix leaves the directory and then the data plane.

A file is written whole (a dot-named temporary renamed over it), and rewritten only when its bytes changed, so a
restarted watcher does not touch what it already mirrored. The directory belongs to the mirror: a `*.json` in it that
the prefix does not hold is removed, except when the listing is empty, which removes nothing (a prefix emptied and
filled again by the control plane, or a listing that raced its writes: `nexusml.core.catalog` keeps the same rule).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from nexusml.core import catalog
from nexusml.core.errors import DiskError, SettingsError
from nexusml.sync import storage
from nexusml.sync.settings import SyncSettings

log = logging.getLogger(__name__)

# A metadata object above this is skipped (logged once per ETag): metadata is a few hundred bytes, and the mirror must
# not fill the disk with whatever lands under the prefix.
MAX_OBJECT_BYTES = 1 << 20


def is_prefix(uri: str | None) -> bool:
    """Whether `WATCH_META_URI` names a prefix of many models (it ends with a slash) rather than one object."""
    return bool(uri) and uri.endswith("/")  # type: ignore[union-attr]


def check_directory(uri: str, directory: Path) -> None:
    """Refuse a `NEXUS_META_PATH` that cannot hold the mirror of the prefix `uri`."""
    if directory.exists() and not directory.is_dir():
        raise SettingsError(
            f"WATCH_META_URI={uri} is a prefix of many models: NEXUS_META_PATH={directory} must name a directory to "
            "mirror them into, not a file"
        )
    if not directory.exists() and directory.name.endswith(catalog.SUFFIX):
        raise SettingsError(
            f"WATCH_META_URI={uri} is a prefix of many models: NEXUS_META_PATH={directory} looks like one model's "
            "file; name the directory to mirror them into"
        )


class S3Mirror:
    """The `*.json` objects directly under an S3 prefix, copied into `directory` by `pull`."""

    def __init__(self, uri: str, directory: Path, settings: SyncSettings) -> None:
        check_directory(uri, directory)
        self.prefix = storage.locate(uri, settings.s3.model_bucket)
        self.directory = directory
        self.endpoint = settings.s3.endpoint_url
        self.client = storage.client(settings.s3)
        self.etags: dict[str, str] = {}  # file name -> ETag of the object last mirrored into it
        self.skipped: dict[str, str] = {}  # file name -> ETag of an object skipped (too large), said once

    def pull(self) -> bool:
        """Bring the directory in line with the prefix; whether a file was written or removed. Raises `NexusError`
        (S3 unreachable or refused, the disk): then the directory is left as it was, partly updated at worst, each
        file whole."""
        listed = self._list()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DiskError(f"{self.directory}: cannot create the metadata directory ({err})") from err
        changed = False
        for name, (key, etag, size) in listed.items():
            if self.etags.get(name) == etag and (self.directory / name).exists():
                continue
            if size > MAX_OBJECT_BYTES:
                if self.skipped.get(name) != etag:
                    log.warning("%s: %d bytes, too large for metadata; not mirrored", self._uri(key), size)
                    self.skipped[name] = etag
                continue
            body = self._get(key)
            if len(body) > MAX_OBJECT_BYTES:  # grew after the listing: skipped, as it would have been
                continue
            changed |= self._write(name, body)
            self.etags[name] = etag
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
            return got["Body"].read(MAX_OBJECT_BYTES + 1)

    def _write(self, name: str, body: bytes) -> bool:
        target = self.directory / name
        try:
            if target.is_file() and target.read_bytes() == body:
                return False
            temporary = self.directory / f".{name}.mirror"
            temporary.write_bytes(body)
            os.replace(temporary, target)
        except OSError as err:
            raise DiskError(f"{target}: cannot write the mirrored metadata ({err})") from err
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
