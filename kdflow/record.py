"""DVC's lock and cache as the one record of what was computed from what, whichever runner ran a stage.

`dvc repro` runs a stage's command, then records it: the md5 of its deps, params and outs in `dvc.lock`, its outs
in DVC's cache, an entry in DVC's run cache. The Prefect flow decides whether to run a stage exactly as `dvc repro`
does (begin_stage): skip a stage DVC sees unchanged, restore one DVC's run cache holds, run the rest; the stage
function runs in a worker process, and the flow's own process records it with DVC's own API the same way
(commit_stage, `Repo.commit`): one writer of dvc.lock, however many stages run at once. So either runner skips
what the other ran.

A flow run holds DVC's read-write lock on every output of the pipeline for as long as it runs: a second flow run,
or a `dvc repro` that would write an output, stops with a message naming the process that holds it.
dvc is imported inside the functions, so the engine works without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from kdflow import graph
from kdflow.artifacts import file_digest, write_text
from kdflow.config import ConfigError
from kdflow.layout import ProjectPaths

UP_TO_DATE, RESTORED = "up to date", "restored from the run cache"
LOCK_ARTIFACT_DIR = "record"  # where a flow run's parent MLflow run keeps dvc.lock, params.yaml and git-kept files
LOCK_MD5_TAG, REMOTE_TAG, GIT_TAG = "kdflow.dvc_lock_md5", "kdflow.dvc_remote", "kdflow.record_commit"


RAW_README = """Your own data files go here (CSV, Parquet or .npz), versioned with `dvc add data/raw/<file>`.
The `prepare` stage depends on this whole folder, so a new version of a file reruns the pipeline from `prepare`.
"""


class RecordError(RuntimeError):
    """The project's DVC record cannot be used as it is: busy, out of step with the code, or not found."""


def code_prefix(root: Path) -> Path | None:
    """None when the project is the code's own checkout (dvc.yaml names code relative to it), else where kdflow's
    code is installed (dvc.yaml names it by absolute path, so editing it still reruns what depends on it)."""
    return None if Path(root).resolve() == graph.CODE_ROOT else graph.CODE_ROOT


def _git_toplevel(root: Path) -> Path | None:
    done = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    return Path(done.stdout.strip()).resolve() if done.returncode == 0 else None


def project_params(params_path: str | Path, root: Path) -> Path:
    """The params file DVC reads, `<root>/params.yaml`; another file is refused, as its values would not be the
    ones dvc.lock records (`kdflow run --params ../params.yaml` from a subfolder would otherwise make a second
    project there)."""
    path = Path(params_path)
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    expected = ProjectPaths(root).params_file
    if path != expected:
        raise ConfigError(f"{params_path}: the flow records its runs in DVC, which reads {expected}; fix: pass "
                          f"--params {expected} (copy your file there) or --root {path.parent}")
    return path


def ensure_project(root: Path) -> None:
    """Make `root` a DVC project whose dvc.yaml is the stage declarations' rendering.

    A folder without DVC gets `dvc init` (without git outside a git checkout or where git ignores the folder, as a
    subdirectory inside one) and
    the rendered dvc.yaml; an existing dvc.yaml that differs from the rendering is an error, never overwritten.
    """
    root = Path(root).resolve()
    expected = graph.render_dvc_yaml(code_prefix(root))
    dvc_yaml = ProjectPaths(root).dvc_yaml
    if dvc_yaml.exists() and dvc_yaml.read_text() != expected:
        raise RecordError(f"{dvc_yaml} differs from kdflow's stage declarations (kdflow/graph.py); "
                          f"fix: `kdflow dvc-yaml --root {root}` rewrites it (your edits to it are lost)")
    if not (root / ".dvc").is_dir():
        from dvc.repo import Repo

        top = _git_toplevel(root)
        if top is not None and subprocess.run(["git", "check-ignore", "-q", str(root)], cwd=top).returncode == 0:
            top = None  # a folder git ignores (a scratch project inside a checkout) is no part of its history
        Repo.init(str(root), no_scm=top is None, subdir=top is not None and top != root).close()
    if not dvc_yaml.exists():
        write_text(dvc_yaml, expected)
    raw = ProjectPaths(root).raw_dir  # prepare's dependency; the default data needs no file in it
    if not raw.exists():
        write_text(raw / "README.md", RAW_README)


@contextlib.contextmanager
def open_repo(root: Path) -> Iterator:
    """The DVC repository at `root`, with the working directory there meanwhile: DVC resolves stages and paths from
    it, as when `dvc` runs in the project (and `dvc repro` runs a stage's command there too)."""
    from dvc.repo import Repo

    before = os.getcwd()
    os.chdir(root)
    repo = Repo(str(root))
    try:
        yield repo
    finally:
        repo.close()
        os.chdir(before)




def _busy(exc: Exception, root: Path) -> RecordError:
    """DVC's lock message as one line: who holds what, and what to do."""
    holders = re.findall(r"\(PID (\d+)\): (.*)", str(exc))
    if not holders:
        return RecordError(f"{root}: DVC's lock is held by another process ({str(exc).splitlines()[0]}); "
                           "wait for the other kdflow or dvc command to finish, then rerun")
    busy = re.search(r"'([^']*)' is busy", str(exc))
    path = Path(busy.group(1)) if busy else root
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    named = "; ".join(dict.fromkeys(f"pid {pid}: {cmd.strip()}" for pid, cmd in holders))
    return RecordError(f"{root}: {shown} is being written by another run ({named}); wait for it to finish "
                       f"and rerun (if no such process exists, delete {root / '.dvc' / 'tmp' / 'rwlock'})")


def _command() -> str:
    # DVC's own locks name their holder by pid and this command line; the same pair lets this process re-enter them.
    return " ".join(sys.argv)


@contextlib.contextmanager
def hold_outputs(root: Path) -> Iterator[None]:
    """Hold DVC's write lock on every output of the pipeline until the block ends; RecordError when another
    process holds one."""
    from dvc.lock import LockError
    from dvc.rwlock import rwlock

    root = Path(root).resolve()
    paths = ProjectPaths.at(root)
    outputs = sorted({os.fspath(p) for stage in graph.STAGES.values() for p in stage.written(paths)})
    with open_repo(root) as repo:
        try:
            lock = rwlock(repo.tmp_dir, repo.fs, _command(), [], outputs,
                          repo.config["core"].get("hardlink_lock", False))
            lock.__enter__()
        except LockError as exc:
            raise _busy(exc, root) from None
        try:
            yield
        finally:
            lock.__exit__(None, None, None)


@contextlib.contextmanager
def locked_repo(root: Path) -> Iterator:
    """The DVC repository at `root` (open_repo) under DVC's repository lock, as `dvc status` and `dvc repro` take it;
    RecordError naming the holder when another process has it."""
    from dvc.lock import LockError
    from dvc.repo import lock_repo

    root = Path(root).resolve()
    with open_repo(root) as repo:
        try:
            with lock_repo(repo):
                yield repo
        except LockError as exc:
            raise _busy(exc, root) from None


def stale_stages(root: Path) -> list[str]:
    """The stages whose deps, params or outs differ from dvc.lock (what `dvc status` lists), in pipeline order."""
    with locked_repo(root) as repo:
        stages = _declared_stages(repo)
        return [name for name in graph.STAGES if stages[name].changed()]


def _declared_stages(repo) -> dict:
    """dvc.yaml's stages by name, with what dvc.lock records of them: both files read once."""
    return {stage.name: stage for stage in repo.stage.load_file()}


def current_stages(root: Path, names: list[str], forced: set[str]) -> set[str]:
    """The stages of `names` (in pipeline order) that begin_stage would skip as up to date whenever it is asked:
    unchanged in DVC's record, not forced, and every stage of `names` they read from current too (one that will
    run may change their inputs). Decided in one reading of dvc.yaml and dvc.lock; none before the first run."""
    if not ProjectPaths.at(root).dvc_lock.exists():
        return set()
    current: set[str] = set()
    with locked_repo(root) as repo:
        stages = _declared_stages(repo)
        for name in names:
            upstream = [up for up in graph.needs(name) if up in names]
            if name not in forced and all(up in current for up in upstream) and not stages[name].changed():
                current.add(name)
    return current


def begin_stage(root: Path, name: str, force: bool = False) -> str | None:
    """Decide stage `name` as `dvc repro` does; None when it must run, its outputs removed for it.

    A stage whose deps, params and outs match dvc.lock is skipped (UP_TO_DATE); one whose inputs match an entry of
    DVC's run cache gets its outputs checked out from there and recorded (RESTORED). `force` always runs.
    """
    from dvc.stage.cache import RunCacheNotFoundError

    with locked_repo(root) as repo:
        (stage,) = repo.stage.collect(name)
        if not force and not stage.changed():
            return UP_TO_DATE
        stage.remove_outs(ignore_remove=False, force=False)
        if not force:
            with contextlib.suppress(RunCacheNotFoundError):
                repo.stage_cache.restore(stage)
                repo.commit(name, force=True)
                return RESTORED
    return None


def commit_stage(root: Path, name: str) -> None:
    """Record stage `name`'s outputs, just written, in dvc.lock, DVC's cache and its run cache (`Repo.commit`).
    One process records for a flow run (the flow's own), so two stages never write dvc.lock at once. The outputs
    are only read (DVC's relink would replace each with a copy from its cache): the stages that read them may
    have started already."""
    from dvc.lock import LockError

    root = Path(root).resolve()
    with open_repo(root) as repo:
        try:
            repo.commit(name, force=True, relink=False)
        except LockError as exc:
            raise _busy(exc, root) from None


def order_lock(root: Path) -> None:
    """List dvc.lock's stages in the order dvc.yaml declares them. DVC appends a stage the first time it records
    it, and stages that run at once finish in any order: without this, the same run would write dvc.lock's
    entries in another order each time (the same content, other bytes, a diff in git)."""
    import yaml
    from dvc.utils.serialize import modify_yaml

    def declared_order(names: list[str]) -> list[str]:
        return [name for name in graph.STAGES if name in names] + [n for n in names if n not in graph.STAGES]

    path = ProjectPaths.at(root).dvc_lock
    if not path.exists():
        return
    # Read with libyaml first: DVC's comment-keeping round trip of the whole file takes about a second, and the
    # order is usually right already (a serial run, a rerun).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    recorded = list((yaml.load(path.read_text(), Loader=loader) or {}).get("stages", {}))
    if recorded == declared_order(recorded):
        return
    with modify_yaml(path) as lock:
        stages = lock.get("stages", {})
        entries = {name: stages[name] for name in declared_order(list(stages))}
        stages.clear()
        stages.update(entries)


def push_to_default_remote(root: Path) -> tuple[str | None, int]:
    """Send every output in dvc.lock to the default remote, when one is configured: (its name, files sent)."""
    with open_repo(root) as repo:
        remote = repo.config["core"].get("remote")
        return remote, repo.push() if remote else 0


def git_kept_files(root: Path) -> list[Path]:
    """What a run's record holds besides DVC's cache: dvc.lock, params.yaml, and the outputs DVC keeps in git
    (metrics and plots, cache: false)."""
    paths = ProjectPaths.at(root)
    kept = [paths.dvc_lock, paths.params_file]
    for stage in graph.STAGES.values():
        kept.extend(p for p in stage.kept_in_git(paths) if p.exists())
    return kept


def commit_to_git(root: Path, branch: str, message: str) -> str | None:
    """Commit the record's git-kept files on `branch` (made from HEAD when new); the commit's SHA, or None when the
    project is no git checkout or nothing changed. On another branch than the checked-out one, the working tree
    and index are left as they are (git plumbing on a temporary index)."""
    top = _git_toplevel(root)
    if top is None:
        return None
    files = [os.path.relpath(p, top) for p in git_kept_files(root)]

    def git(*args: str, env: dict | None = None) -> str:
        return subprocess.run(["git", *args], cwd=top, env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    current = subprocess.run(["git", "symbolic-ref", "--short", "-q", "HEAD"], cwd=top, capture_output=True,
                             text=True).stdout.strip()
    if current == branch:
        git("add", "-f", "--", *files)
        if not git("diff", "--cached", "--name-only", "--", *files):
            return None
        git("commit", "-q", "-m", message, "--", *files)
        return git("rev-parse", "HEAD")
    exists = subprocess.run(["git", "rev-parse", "--verify", "-q", f"refs/heads/{branch}"], cwd=top,
                            capture_output=True, text=True).stdout.strip()
    parent = exists or git("rev-parse", "HEAD")
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "GIT_INDEX_FILE": os.path.join(scratch, "index")}
        git("read-tree", parent, env=env)
        git("add", "-f", "--", *files, env=env)
        tree = git("write-tree", env=env)
        if tree == git("rev-parse", f"{parent}^{{tree}}"):
            return None
        commit = git("commit-tree", tree, "-p", parent, "-m", message, env=env)
    git("update-ref", f"refs/heads/{branch}", commit)
    return commit


def log_record(tracked, root: Path, remote: str | None, git_commit: str | None) -> None:
    """The run's record in its MLflow run: the git-kept files as artifacts, dvc.lock's md5, remote and commit."""
    paths = ProjectPaths.at(root)
    for path in git_kept_files(root):
        folder = Path(LOCK_ARTIFACT_DIR, os.path.relpath(path.parent, paths.root)).as_posix()
        tracked.log_artifact(path, folder if folder != f"{LOCK_ARTIFACT_DIR}/." else LOCK_ARTIFACT_DIR)
    tags = {LOCK_MD5_TAG: file_digest(paths.dvc_lock)}
    if remote:
        tags[REMOTE_TAG] = remote
    if git_commit:
        tags[GIT_TAG] = git_commit
    tracked.set_tags(tags)


def recorded_run(client, ref: str):
    """The flow run whose record restores `ref`: a run id (a flow run, or a stage or model run inside one), or a
    registered model `models:/NAME@ALIAS` or `models:/NAME/VERSION` (the run that trained that version)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    run_id = ref
    if ref.startswith("models:/"):
        name, _, which = ref.removeprefix("models:/").replace("@", "/@", 1).partition("/")
        try:
            version = (client.get_model_version_by_alias(name, which[1:]) if which.startswith("@")
                       else client.get_model_version(name, which))
        except MlflowException as exc:
            raise RecordError(f"{ref}: no such registered model version ({exc.message.splitlines()[0]})") from None
        run_id = version.run_id
    try:
        run = client.get_run(run_id)
        while LOCK_MD5_TAG not in run.data.tags and MLFLOW_PARENT_RUN_ID in run.data.tags:
            run = client.get_run(run.data.tags[MLFLOW_PARENT_RUN_ID])
    except MlflowException:
        raise RecordError(f"run {run_id} not found in the tracking store; pass a run id of its experiment "
                          "(or set MLFLOW_TRACKING_URI to the store that holds it)") from None
    if LOCK_MD5_TAG not in run.data.tags:
        raise RecordError(f"run {run_id} holds no DVC record: it was not made inside a kdflow flow run (`kdflow run`, "
                          "a served or deployed run); a `dvc repro` run's record is the dvc.lock committed with it: "
                          "`git checkout <commit> -- dvc.lock params.yaml && dvc checkout`")
    return run


def checkout(client, root: Path, ref: str) -> list[tuple[str, str]]:
    """Restore the outputs, dvc.lock, params.yaml and git-kept files of the flow run behind `ref`, byte for byte,
    from DVC's cache or, for what it lacks, the default remote; runs no stage. Returns [(path, md5)] restored."""
    import yaml

    root = Path(root).resolve()
    run = recorded_run(client, ref)
    with tempfile.TemporaryDirectory() as scratch:
        downloaded = Path(client.download_artifacts(run.info.run_id, LOCK_ARTIFACT_DIR, scratch))
        lock_file = downloaded / "dvc.lock"
        if file_digest(lock_file) != run.data.tags[LOCK_MD5_TAG]:
            raise RecordError(f"run {run.info.run_id}: its logged dvc.lock does not match the md5 it recorded; "
                              "the artifact store was changed: nothing was restored")
        ensure_project(root)
        for source in sorted(p for p in downloaded.rglob("*") if p.is_file()):
            target = root / source.relative_to(downloaded)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text(target, source.read_text())
    lock = yaml.safe_load(ProjectPaths(root).dvc_lock.read_text())
    restored = [(out["path"], out.get("md5", "")) for stage in lock["stages"].values() for out in stage.get("outs", [])]
    from dvc.exceptions import CheckoutError

    with open_repo(root) as repo:
        try:
            if repo.config["core"].get("remote"):
                repo.pull(force=True)
            else:
                repo.checkout(force=True)
        except CheckoutError as exc:
            raise RecordError(f"{root}: DVC's cache lacks some outputs of run {run.info.run_id} "
                              f"({', '.join(exc.target_infos) if hasattr(exc, 'target_infos') else exc}); "
                              "fix: configure the remote the run pushed to (`dvc remote add -d ...`) and rerun") from None
    return restored
