"""Work folders: where a stage trains, so that a run killed under ``dvc repro`` resumes instead of starting over.

DVC deletes a stage's outputs before it runs the command again (or checks old ones back out), so a ``last``
checkpoint kept in the output folder never survives to the next ``dvc repro``. ``train(..., work_dir=W)``
therefore writes its running checkpoints and DVCLive logs into ``W``, a folder no stage declares:

    W/run.json                    what the run is (its identity, below); written before anything else
    W/{last,best,final,epoch_NNNN}.safetensors
    W/live/<name of live_dir>/    the DVCLive folder (metrics.json, plots/); same name, so the same headline key

and, once the last epoch is done, publishes them: each checkpoint is copied into ``out_dir`` under a temporary
name, fsynced and renamed over the old file, stale checkpoint names there are removed, and ``live_dir/plots``
and ``live_dir/metrics.json`` are replaced the same way. Copies, not hard links: no file is then shared between
``W`` and the outputs, so nothing that rewrites an output in place (a ``cp``, a tool) can change what a later
resume loads. The stage removes ``W`` (:func:`stage_work`) only after all its models are published, so a kill
during publishing, or between two models of one stage, resumes with nothing left to train.

Resuming. A new run finds ``W/last.safetensors`` and compares its ``run.json`` with its own identity: the
task class, every recorded :class:`TrainConfig` key (not just ``TRAJECTORY_KEYS``: ``log_every`` or the
checkpoint policy change the published logs and files), the device type, the steps per epoch, the live
folder's name, the torch version and the stage's :func:`fingerprint` (its params sections without
``NOT_RUN_KEYS``, the size / mtime of its input files, the source of the loaded code). Equal: it resumes (the
loop prints ``resumed from epoch N``). Different, or an unreadable checkpoint: the folder is discarded with
one line naming the differences, and the run starts over. Discard rather than refuse, because the folder
is a scratch copy of a run nobody will ask for again (DVC re-runs the stage for the current params and
data), nothing in it was published, and refusing would only make the user delete it by hand; a changed or
touched input discards too (the safe side). The world size is not compared: the loop resumes on another
number of ranks with a warning, as before. Under DDP rank 0 decides, prepares and publishes; the other
ranks learn the decision by broadcast (the folder must be on storage every rank reads, as ``out_dir`` is).

Where. :func:`default_work` puts ``W`` beside the output folder, ``<parent>/.<name>.resume`` (gitignored
by the pattern ``.*.resume/``): one folder per output folder, so runs that write different outputs (tests,
ad hoc runs into a temporary ``--out``) never meet in a shared ``.resume/`` and never discard each other's
folder; and on the outputs' file system (where their space was planned).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

from models.common.io import atomic_dir, atomic_file
from models.common.params import ParamsError
from models.train.checkpoint import CheckpointError, read_state

RECORD = "run.json"
LIVE = "live"
# Params keys that change no trained weight or log (dvc.yaml lists none of them for a training stage; checked
# by tests/test_kill_resume.py): changing one, e.g. fewer loader workers after an out-of-memory kill, resumes.
NOT_RUN_KEYS = frozenset({"num_workers", "image_cache_mb", "activation_checkpointing", "figure_samples",
                          "figure_windows"})


def default_work(out: str | Path) -> Path:
    """``<parent>/.<name>.resume`` for the output folder ``out`` (see the module docstring)."""
    out = Path(os.path.normpath(out))
    return out.parent / f".{out.name}.resume"


def fingerprint(*sections: Any, inputs: tuple | list = ()) -> dict:
    """What decides a run besides its TrainConfig: each params section (a dataclass) without
    ``NOT_RUN_KEYS``; per input path a digest of its files' relative paths, sizes and mtimes; and the code,
    a digest per loaded module of ``models/`` and ``stages/`` (call it after the stage's imports)."""
    params = {}
    for section in sections:
        values = dataclasses.asdict(section)
        params[type(section).__name__] = {k: v for k, v in values.items() if k not in NOT_RUN_KEYS}
    return {"params": params, "inputs": {str(p): _stat_digest(Path(p)) for p in inputs}, "code": code_digests()}


def code_digests(root: Path | None = None) -> dict[str, str]:
    """SHA-256 (16 hex digits) of every loaded module's source under ``root/models`` and ``root/stages`` (root:
    the folder holding this package), by relative path: a resumed run must run the code that began it, since
    DVC records the code's hash beside the weights (a fixed bug would otherwise be half in them)."""
    root = (root or Path(__file__).resolve().parents[2]).resolve()
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        path = Path(path).resolve()
        if root in path.parents and path.relative_to(root).parts[0] in ("models", "stages") and path.is_file():
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return dict(sorted(out.items()))


def _stat_digest(path: Path) -> str:
    """Digest of (relative path, size, mtime_ns) of every file under ``path`` (a file: itself); cheap for a
    large cache, and a rewritten file changes it even when its bytes did not (it then discards, the safe side)."""
    if not path.exists():
        return "missing"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else '.'}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def live_folder(work: Path, live_dir: Path) -> Path:
    """The DVCLive folder inside ``work``: the same name as ``live_dir`` (metrics.json is keyed by it)."""
    return work / LIVE / Path(os.path.normpath(live_dir)).name


def _is_temp(name: str) -> bool:
    """A temporary file of an atomic write (``.<name>.tmp-<pid>`` / ``.old-<pid>``) that a kill left behind."""
    return name.startswith(".") and (".tmp-" in name or ".old-" in name)


def _is_ours(path: Path) -> bool:
    """A folder this module made: it holds a run record, or only such folders (a stage's root) and leftover
    temporary files, or nothing."""
    if not path.is_dir():
        return False
    if (path / RECORD).is_file():
        return True
    return all(_is_ours(child) if child.is_dir() else _is_temp(child.name) for child in path.iterdir())


def remove(work: str | Path) -> None:
    """Delete a work folder; refuse (ParamsError) to delete a folder this module did not make."""
    work = Path(work)
    if not work.exists():
        return
    if not _is_ours(work):
        raise ParamsError(f"{work}: exists and is not a training work folder (no {RECORD}); "
                          "pass another --work or remove it yourself")
    shutil.rmtree(work)


def _check_place(work: Path, out_dir: Path, live_dir: Path) -> None:
    w = work.resolve()
    for name, folder in (("out", out_dir), ("live", live_dir)):
        f = folder.resolve()
        if w == f or f in w.parents or w in f.parents:
            raise ParamsError(f"work folder {work} overlaps the {name} folder {folder}: DVC deletes outputs before "
                              "a run, so the work folder must lie outside them")


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k in sorted(tree):
            out.update(_leaves(tree[k], f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def differences(then: dict, now: dict) -> list[str]:
    """``key: old -> new`` for every leaf that differs between two identities."""
    a, b = _leaves(then), _leaves(now)
    return [f"{k}: {a.get(k, '<none>')!r} -> {b.get(k, '<none>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<none>") != b.get(k, "<none>")]


def prepare(work: Path, identity: dict, out_dir: Path, live_dir: Path, resume: bool) -> bool:
    """Rank 0, before training: True when ``work`` holds a checkpoint of this very run (resume from it);
    else empty ``work`` (one line on stderr when it held another run's checkpoint), record ``identity`` and
    return False."""
    _check_place(work, out_dir, live_dir)
    identity = json.loads(json.dumps(identity, sort_keys=True))   # tuples -> lists, as read back
    last = work / "last.safetensors"
    if work.exists() and not _is_ours(work):
        remove(work)  # raises, naming the folder
    if resume and last.is_file():
        try:
            recorded = json.loads((work / RECORD).read_text())
        except (OSError, ValueError) as exc:
            diffs = [f"unreadable {RECORD} ({exc})"]
        else:
            diffs = differences(recorded, identity)
        if not diffs:
            try:
                read_state(last)
            except CheckpointError as exc:
                diffs = [f"unreadable checkpoint ({' '.join(str(exc).split())})"]
        if not diffs:
            return True
        more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
        print(f"{work}: discarding the work folder of an interrupted run that cannot be resumed: "
              f"{'; '.join(diffs[:4])}{more}; starting over", file=sys.stderr, flush=True)
    remove(work)
    work.mkdir(parents=True)
    with atomic_file(work / RECORD) as fh:
        json.dump(identity, fh, indent=1, sort_keys=True)
        fh.write("\n")
    return False


def _copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` atomically: copy to a temporary name, fsync, rename."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def checkpoint_names(folder: Path) -> list[str]:
    """The training checkpoints in ``folder`` (last, best, final, epoch_NNNN), sorted."""
    fixed = {"last.safetensors", "best.safetensors", "final.safetensors"}
    return sorted(p.name for p in folder.glob("*.safetensors")
                  if p.name in fixed or (p.name.startswith("epoch_") and p.is_file()))


def publish(work: Path, out_dir: Path, live_dir: Path) -> None:
    """Rank 0, after the last epoch: make ``out_dir`` / ``live_dir`` hold exactly the work folder's checkpoints
    and logs (``final`` is placed last; the work folder is left as it is)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = checkpoint_names(work)
    for name in sorted(names, key=lambda n: n == "final.safetensors"):
        _copy(work / name, out_dir / name)
    for name in set(checkpoint_names(out_dir)) - set(names):   # an older run's best / epoch_NNNN
        (out_dir / name).unlink()
    live = live_folder(work, live_dir)
    live_dir.mkdir(parents=True, exist_ok=True)
    for entry in sorted(live.iterdir()) if live.is_dir() else []:
        if _is_temp(entry.name):
            continue
        if entry.is_dir():
            with atomic_dir(live_dir / entry.name) as tmp:
                shutil.copytree(entry, tmp, dirs_exist_ok=True, ignore=lambda _, names: [n for n in names
                                                                                         if _is_temp(n)])
        else:
            with atomic_file(live_dir / entry.name, "wb") as fh, open(entry, "rb") as src:
                shutil.copyfileobj(src, fh)


@contextlib.contextmanager
def stage_work(work: str | Path | None, out: str | Path) -> Iterator[Path]:
    """A stage's work folder (``work``, or :func:`default_work` of ``out``): yielded to its ``train()`` calls,
    removed by the main rank (``RANK`` 0) when the block succeeds, kept when it raises or the process is killed
    (the next run resumes from it)."""
    path = Path(work) if work else default_work(out)
    yield path
    if os.environ.get("RANK", "0") == "0":
        remove(path)
