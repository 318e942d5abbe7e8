"""The mappings ``$ingest`` serves, reloaded when the mappings folder changes: a new or edited
file is used by the next request without a restart, and a broken one is refused (logged, with
its file and line) while the previous set stays in service. Under ``whatmatters serve``, SIGHUP
reloads the set in the master and restarts the workers on it (``ServedMappings``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from service.fhir.ingest import Mappings
from service.mapping.files import MappingError
from service.validation.profiles import ProfileError

log = logging.getLogger("whatmatters.mappings")

Signature = tuple[tuple[str, int, int], ...]


def folder_signature(folder: Path) -> Signature:
    """What changes when a mapping file is added, removed or edited."""
    found = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append((path.name, stat.st_mtime_ns, stat.st_size))
    return tuple(found)


class LiveMappings:
    """The current mapping set of one application."""

    def __init__(self, folder: Path, current: Mappings, load: Callable[[], Mappings]) -> None:
        self.folder = folder
        self.current = current
        self.refused: str | None = None  # why the last change was not taken, if it was not
        self._load = load
        signature = folder_signature(folder)
        loaded = sorted(mapping.path.name for mapping in current.files.values())
        # a file added or removed since the set was loaded: load again on first use
        self._signature = signature if [name for name, *_ in signature] == loaded else ()
        self._lock = threading.Lock()

    def get(self) -> Mappings:
        """The mappings to use now, reloading first if the folder changed."""
        signature = folder_signature(self.folder)
        if signature == self._signature:
            return self.current
        with self._lock:
            if signature != self._signature:
                self._signature = signature
                try:
                    self.current = self._load()
                    self.refused = None
                    log.info("mappings reloaded: %s", ", ".join(sorted(self.current.files)))
                except MappingError as exc:
                    self.refused = str(exc)
                    log.warning("mappings folder changed but is broken; kept the old set: %s", exc)
        return self.current


class ServedMappings:
    """The last good mapping set of a ``whatmatters serve`` master, which its workers fall back
    on: a worker reads the folder when it starts, and when the folder is broken it serves this
    set instead of failing to boot (a worker that cannot boot stops the whole service).

    SIGHUP makes the master read the folder again (``reload``) before gunicorn starts new
    workers: a good folder becomes the set; a broken one is refused and logged with its file
    and line, and the set before stays in service."""

    def __init__(self, current: Mappings, load: Callable[[], Mappings]) -> None:
        self.current = current
        self._load = load

    def reload(self) -> bool:
        """Read the folder again; False (logged, the set kept) when it is broken."""
        try:
            fresh = self._load()
        except MappingError as exc:
            log.error(
                "mappings reload refused: the mappings folder is broken; kept the previous "
                "set (%s): %s",
                _names(self.current),
                exc,
            )
            return False
        except ProfileError:  # its message names a path, which the logs never show
            log.error(
                "mappings reload refused: the profiles folder cannot be read (`whatmatters "
                "map reload` names the file); kept the previous set (%s)",
                _names(self.current),
            )
            return False
        self.current = fresh
        log.info("mappings reloaded: %s", _names(fresh))
        return True

    def for_worker(self, load: Callable[[], Mappings]) -> Mappings:
        """What a new worker serves: the folder as it is (``load``), or the last good set."""
        try:
            return load()
        except MappingError as exc:
            log.error(
                "the mappings folder is broken; this worker serves the last good set (%s): %s",
                _names(self.current),
                exc,
            )
            return self.current


def _names(mappings: Mappings) -> str:
    return ", ".join(sorted(mappings.files)) or "none"
