"""Every model the control plane publishes: one metadata file, or a directory of them.

`NEXUS_META_PATH` names a file, as it always did (one model; a broken file is the command's error), or a
directory in which every `*.json` is one model's metadata, in the same schema. In a directory one file's problem
is that model's alone: the catalog keeps it, with its cause, beside the models that are usable, so the sync,
the watcher and the proxy serve the others and say what is wrong with the one. Names starting with a dot are
skipped: they are an atomic writer's temporary files (and the single-file name `.nexus_meta.json`).

Two files naming the same model are both refused, each problem naming both files, and the name is *held*: its
readers leave whatever they serve for it as it is (no update, no removal) until one of the files goes, since
neither can be told to be the one the control plane meant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nexusml.core import metadata
from nexusml.core.errors import MetadataError
from nexusml.core.metadata import ModelMetadata

SUFFIX = ".json"

Stamp = tuple[tuple[str, int, int, int, int], ...]


@dataclass(frozen=True)
class Catalog:
    """The usable models by name, where each came from, and what is wrong with the rest."""

    models: Mapping[str, ModelMetadata] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)  # model name -> its file (or S3 object)
    problems: Mapping[str, str] = field(default_factory=dict)  # file -> one line naming the file and the cause
    held: frozenset[str] = frozenset()  # names claimed by two files: leave what is served for them as it is

    @property
    def names(self) -> list[str]:
        return sorted(self.models)


def is_directory(path: Path) -> bool:
    """Whether `NEXUS_META_PATH` names a directory of metadata files rather than one file."""
    return path.is_dir()


def listing(directory: Path) -> list[Path]:
    """The metadata files of a directory, sorted: `*.json`, not hidden."""
    try:
        return sorted(p for p in directory.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith("."))
    except OSError as err:
        raise MetadataError(f"{directory}: cannot list the metadata directory ({err})") from err


def stamp(path: Path) -> Stamp:
    """A cheap fingerprint of the metadata at `path`: it changes when any file does, its content (mtime, size), its
    inode (a rename over it) or its status (ctime: a file unreadable until a chmod or chown fixed it)."""
    files = listing(path) if path.is_dir() else [path]
    found = []
    for file in files:
        try:
            info = file.stat()
        except OSError:
            continue
        found.append((file.name, info.st_mtime_ns, info.st_size, info.st_ino, info.st_ctime_ns))
    return tuple(found)


def read(path: Path) -> Catalog:
    """The catalog at `path`: a directory of metadata files, or one file.

    One file keeps its old contract: a problem with it raises `MetadataError`. A directory raises only when it
    cannot be listed; a file in it that cannot be read or used becomes a problem of the catalog."""
    if not path.is_dir():
        meta = metadata.load(path)
        return Catalog({meta.name: meta}, {meta.name: str(path)})
    texts: list[tuple[str, str | MetadataError]] = []
    for file in listing(path):
        try:
            texts.append((str(file), file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as err:
            texts.append((str(file), MetadataError(f"{file}: cannot read metadata ({err})")))
    return parse(texts)


def parse(texts: Iterable[tuple[str, str | MetadataError]]) -> Catalog:
    """Build a catalog from (source, text) pairs, a text being a `MetadataError` when it could not be read."""
    models: dict[str, ModelMetadata] = {}
    sources: dict[str, str] = {}
    problems: dict[str, str] = {}
    claimed: dict[str, list[str]] = {}
    for source, text in texts:
        try:
            if isinstance(text, MetadataError):
                raise text
            meta = metadata.loads(text, source)
        except MetadataError as err:
            problems[source] = str(err)
            continue
        claimed.setdefault(meta.name, []).append(source)
        models[meta.name] = meta
        sources[meta.name] = source
    held = set()
    for name, files in claimed.items():
        if len(files) > 1:
            held.add(name)
            del models[name], sources[name]
            for source in files:
                problems[source] = (
                    f"{source}: model {name} is also named by {', '.join(f for f in files if f != source)}; "
                    "neither file is used until one of them is removed"
                )
    return Catalog(models, sources, problems, frozenset(held))


def file_name(source: str) -> str:
    """What a model's source is remembered by: its file (or object) name, so that a directory mounted elsewhere
    (the sync's container, the watcher's, the proxy's) still match."""
    return source.rstrip("/").rsplit("/", 1)[-1]


def departed(catalog: Catalog, present: Iterable[str], remembered: Mapping[str, str]) -> list[str]:
    """The models of `present` (a repository's, a proxy's) that no metadata names any more: they are to be removed.

    One rule for the sync, the watcher and the proxy, so the three agree. Kept: a usable or held name; a model
    whose remembered file is there but unusable (a broken or half-written file keeps its model's served version);
    a model whose file is not remembered while some file is unusable (it may be that model's); and every model when
    the catalog is empty: a listing with nothing in it (a mount not populated yet, a control plane rewriting the
    directory by `rm *; cp`) is not taken for "remove them all"."""
    if not (catalog.models or catalog.problems or catalog.held):
        return []
    broken = {file_name(source) for source in catalog.problems}
    gone = []
    for name in present:
        if name in catalog.models or name in catalog.held:
            continue
        source = remembered.get(name)
        if (source is None and broken) or source in broken:
            continue
        gone.append(name)
    return sorted(gone)


def remembered_sources(catalog: Catalog, remembered: Mapping[str, str], removed: Iterable[str]) -> dict[str, str]:
    """The sources to remember after a pass over `catalog`: each usable model's file; removed models forgotten."""
    dropped = set(removed)
    kept = {name: source for name, source in remembered.items() if name not in dropped}
    return {**kept, **{name: file_name(source) for name, source in catalog.sources.items()}}
