"""Reading and writing a model package folder (`model.tflite` + `manifest.json`).

Every read is bounded (the manifest by `MAX_MANIFEST_BYTES`, the model by the size its manifest
states) and refuses anything but a regular file. A package is written all or nothing, and never
over anything that is not a package: replacing a folder that holds other files, or a plain file,
is refused, so `fedrec export --out` and a device install cannot delete what they did not create.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from protocol.files import FileRefused, FileTooLarge, fsync_dir, read_bounded
from protocol.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, ManifestError, sha256_bytes

PACKAGE_FILES = frozenset({MODEL_FILE, MANIFEST_FILE})


def read_verified_model(manifest: Manifest, model_path: Path | str) -> bytes:
    """The model file's bytes, after checking them against the manifest's size and sha256.

    At most `manifest.model_bytes + 1` bytes are read, whatever the file claims to be.
    """
    model_path = Path(model_path)
    try:
        data = read_bounded(model_path, max_bytes=manifest.model_bytes, what="model file")
    except FileTooLarge:
        raise ManifestError(f"model file is larger than the {manifest.model_bytes} bytes the manifest says "
                            "(replaced?)", model_path) from None
    except FileRefused as error:
        raise ManifestError(str(error)) from None
    if len(data) != manifest.model_bytes:
        raise ManifestError(
            f"model file has {len(data)} bytes, the manifest says {manifest.model_bytes} "
            "(truncated or replaced?)", model_path,
        )
    digest = sha256_bytes(data)
    if digest != manifest.model_sha256:
        raise ManifestError(
            f"model sha256 {digest[:12]}... does not match the manifest's {manifest.model_sha256[:12]}... "
            "(corrupt or replaced?)", model_path,
        )
    return data


def is_replaceable_package(path: Path) -> bool:
    """Whether `path` is a folder holding nothing but package files (possibly none of them)."""
    try:
        return path.is_dir() and not path.is_symlink() and {p.name for p in path.iterdir()} <= PACKAGE_FILES
    except OSError:
        return False


def check_package_target(target: Path | str, *, replace: bool) -> None:
    """Refuse (ManifestError) a `target` that `write_package` would refuse, before any work."""
    target = Path(target)
    if not (target.exists() or target.is_symlink()):
        return
    if not is_replaceable_package(target):
        kind = "a folder with other files" if target.is_dir() and not target.is_symlink() else "not a folder"
        raise ManifestError(f"{kind}, not a model package; refusing to replace it", target)
    if not replace and any(target.iterdir()):
        raise ManifestError("a model package is already there; refusing to replace it unless told to "
                            "(fedrec export --overwrite)", target)


def write_package(target: Path | str, model_bytes: bytes, manifest: Manifest, *, replace: bool = False) -> None:
    """Write `model.tflite` and `manifest.json` as the folder `target`, all or nothing.

    Both files go to a temporary sibling folder, are fsynced, and the folder is renamed into
    place, so a crash leaves either the old package or the new one where readers look. An
    existing `target` is replaced only when `replace` is true and it is a package folder (or an
    empty one); anything else at `target` is refused with a ManifestError and left untouched.
    """
    target = Path(target)
    check_package_target(target, replace=replace)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ManifestError(f"cannot create the folder: {error.strerror or error}", target.parent) from None
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
    retired = None
    try:
        staging.chmod(0o755)  # mkdtemp makes it 0700; a package is meant to be readable
        (staging / MODEL_FILE).write_bytes(model_bytes)
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
        for name in PACKAGE_FILES:
            _fsync_file(staging / name)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".retired", dir=target.parent))
            os.replace(target, retired / "package")
        os.replace(staging, target)
        fsync_dir(target.parent)
    except OSError as error:
        if retired is not None and not target.exists() and (retired / "package").exists():
            os.replace(retired / "package", target)  # put the old package back
        raise ManifestError(f"cannot write the package: {error.strerror or error}", target) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
