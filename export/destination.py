"""The --output folder: what an export may replace, the staging folder it writes into, the swap that
puts the new artifact in place, and what the next export does about a killed one.

- Replace: only an empty folder, or (with --overwrite) an artifact of this tool: a folder with its
  manifest.json and no file the manifest does not list. Anything else (a checkpoint, a folder of user
  files, a file) is refused with one line before any work, and nothing is touched.
- Beside OUTPUT (NAME its name) an export creates only, named after itself (export/owners.py):
      .NAME.<pid>-<host>.<random>.partial    the staging folder: the new artifact while it is written
      .NAME.<pid>-<host>.<random>.previous   the artifact it replaces, during the swap only
- The swap: every file and folder flushed to disk, then two renames (OUTPUT -> .previous, staging ->
  OUTPUT) with SIGINT and SIGTERM held until both are done: only SIGKILL or a power cut can fall between.
- The next export of OUTPUT first puts a dead export's `.previous` back if OUTPUT is missing, then
  removes the staging and previous folders of dead exports (never those of one still running).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from runtime.manifest import MANIFEST_NAME

from .errors import ExportError
from .faults import fault_point
from .owners import alive, owner_tag, sweep_scratch

log = logging.getLogger("export")

_OURS = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{6})\.[a-z0-9_]+\.(?P<kind>partial|previous)$")
_OWN_FILES = {f".{MANIFEST_NAME}.tmp"}  # runtime.manifest.write_durably's temporary file
_INSIDE_FOLDER_GRAPHS = {"Manifest.json"}  # a .mlpackage's own index, rewritten by coremltools on open


def prepare_destination(output: str | os.PathLike, overwrite: bool) -> Path:
    """`output` as an absolute path (`.`, `""` and relative paths resolved, links followed), checked
    (see `check_destination`) after the debris of dead exports was dealt with (`recover`, `sweep_scratch`)."""
    output = resolve_output(output)
    recover(output)
    sweep_scratch()
    check_destination(output, overwrite)
    return output


def resolve_output(output: str | os.PathLike) -> Path:
    try:
        path = Path(os.path.expanduser(os.fspath(output))).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop (RuntimeError before Python 3.13)
        raise ExportError(f"--output {output}: {_one_line(err)}") from None
    if path.parent == path:
        raise ExportError(f"--output {output}: a filesystem root cannot be an artifact folder")
    return path


def check_destination(output: Path, overwrite: bool) -> None:
    """One line, before any work, unless `output` may receive an artifact."""
    if output.exists() and not output.is_dir():
        raise ExportError(f"--output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise ExportError(f"--output {output} is not empty; pass --overwrite to replace it")
        problem = artifact_problem(output)
        if problem:
            raise ExportError(f"--overwrite replaces only an artifact of this tool or an empty folder; {output} "
                              f"{problem}: nothing was changed")
    existing = next(p for p in output.parents if p.exists())  # where the staging folder goes, or above it
    if not existing.is_dir():
        raise ExportError(f"--output {output}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"--output {output}: cannot write in {existing} (permission denied)")


def artifact_problem(folder: Path, complete: bool = False) -> str | None:
    """None if `folder` is an artifact of this tool (its manifest.json lists every file in it; with
    `complete`, every listed file is also there); otherwise what it is instead, as a phrase."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return f"has no {MANIFEST_NAME} (it is not an artifact of this tool)"
    try:
        listed = listed_names(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return f"has a {MANIFEST_NAME} that this tool did not write"
    found = _entries(folder)
    unlisted = [name for name, is_dir in found.items()
                if name not in listed | _OWN_FILES and not (is_dir and any(n.startswith(name + "/") for n in listed))
                and not (name.rpartition("/")[2] in _INSIDE_FOLDER_GRAPHS and name.rpartition("/")[0] in listed)]
    if unlisted:
        more = f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else ""
        return f"holds files its manifest does not list ({', '.join(sorted(unlisted)[:3])}{more})"
    missing = sorted(n for n in listed if n not in found) if complete else []
    if missing:
        return f"is missing {missing[0]}"
    return None


def listed_names(data) -> set[str]:
    """Every path a manifest (any format_version) lists: graph files, their weights, variants and the
    files of folder graphs, side files; folder graphs themselves too."""
    if not isinstance(data, dict) or not isinstance(data.get("format_version"), int):
        raise ValueError("not a manifest")
    records = [{"file": name, **record} for name, record in (data.get("files") or {}).items()]
    for graph in data["graphs"].values():
        records += [graph, *([graph["weights"]] if graph.get("weights") else []), *(graph.get("variants") or {}).values()]
    names = {MANIFEST_NAME}
    for record in records:
        names.add(record["file"])
        names.update(f"{record['file']}/{inner}" for inner in record.get("files") or {})
    return names


def _entries(folder: Path) -> dict[str, bool]:
    """Relative path -> is a real folder, for everything under `folder` (links are entries, not followed)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        for name in dirs:
            found[(base / name).as_posix()] = not (Path(root) / name).is_symlink()
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
        found.update({(base / name).as_posix(): False for name in files})
    return found


@contextlib.contextmanager
def staged_folder(output: Path):
    """Yield a fresh folder beside `output` (the same filesystem, so the final move is a rename). If
    the block succeeds, flush it to disk and swap it into place; on any failure or interrupt remove it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.{owner_tag()}.", suffix=".partial", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the artifact should not be
    try:
        yield staging
        fault_point("manifest")
        _flush(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap(staging, output)


def _swap(staging: Path, output: Path) -> None:
    previous = staging.with_name(staging.name.removesuffix(".partial") + ".previous")
    with _signals_held(f"{output} holds the new artifact: the signal came as it was moved into place"):
        replacing = output.exists()
        if replacing:
            os.replace(output, previous)
        try:
            fault_point("swap")
            os.replace(staging, output)
        except BaseException:  # the new artifact cannot go in: the old one goes back
            if replacing:
                os.replace(previous, output)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync(output.parent)
        fault_point("swapped")
        if replacing:
            shutil.rmtree(previous, ignore_errors=True)


@contextlib.contextmanager
def _signals_held(note: str):
    """SIGINT and SIGTERM wait until the block is done, then take effect (with `note` as the message).
    Python runs signal handlers in the main thread only: elsewhere nothing can interrupt the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    held = {sig: signal.signal(sig, lambda number, frame: pending.append(number)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
    if pending:
        handler = held[pending[0]]
        if handler == signal.SIG_DFL:
            signal.raise_signal(pending[0])
        elif callable(handler):
            try:
                handler(pending[0], None)
            except KeyboardInterrupt as err:
                err.args = (note,)
                raise


def recover(output: Path) -> None:
    """Before an export of `output`: if `output` is missing and a dead export left the artifact it was
    replacing aside, put it back; then remove the staging and previous folders of dead exports."""
    try:
        siblings = list(output.parent.iterdir())
    except OSError:  # no parent yet: nothing to recover
        return
    ours = [(p, m) for p in siblings if (m := _OURS.match(p.name)) and m["name"] == output.name
            and p.is_dir() and not p.is_symlink()]
    dead = [(p, m) for p, m in ours if not alive(int(m["pid"]), m["host"])]
    if not output.exists():
        if len(dead) < len(ours):  # a running export may be between its two renames: restore nothing yet
            dead = [(p, m) for p, m in dead if m["kind"] == "partial"]
        else:
            aside = [p for p, m in dead if m["kind"] == "previous" and artifact_problem(p, complete=True) is None]
            if aside:
                restored = max(aside, key=lambda p: p.stat().st_mtime)
                os.replace(restored, output)
                log.warning("restored %s: an interrupted export had moved it to %s", output, restored.name)
    swept = [p for p, _ in dead if p.exists()]
    for path in swept:
        shutil.rmtree(path, ignore_errors=True)
    if swept:
        log.info("removed %d folder(s) that interrupted exports left beside %s", len(swept), output)


def _flush(folder: Path) -> None:
    """fsync every file and folder under `folder`: after the rename, a crash finds the whole artifact."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            with open(Path(root) / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync(Path(root))


def _fsync(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without folder handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(folder: Path) -> OSError | None:
    """After a writer failed with its own exception type (OpenVINO: "iostream error"): the OSError
    that writing one more MB to `folder` gives (a full disk, a file size limit), or None."""
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return err
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
