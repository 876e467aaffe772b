"""Whether a stage's inputs belong together, checked before the stage reads, trains or tracks anything.

Each artifact records the md5s of what it was made from: the dataset card its splits', a checkpoint the inputs
of the stage that trained it, the soft-label manifest its teacher's and its splits'. An input made from another
version of a file the stage also reads now (a teacher retrained since the soft labels were written, data
prepared again since the student was distilled) is stale: the stage stops and names the stale file and the
stage to rerun, rather than training on a mix of versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kdflow.artifacts import ArtifactError, file_digest, load_checkpoint, read_json
from kdflow.datasets import read_dataset_card
from kdflow.layout import MODELS, SPLITS, ProjectPaths
from kdflow.lineage import relative


def _current(paths: ProjectPaths, digests: dict[str, str], name: str) -> str | None:
    """The md5 of the project file `name` (relative to the root) now, or None when it is gone."""
    if name in digests:
        return digests[name]
    path = paths.root / name
    return file_digest(path) if path.is_file() else None


def _stale(path: Path, made_from: str, recorded: str, now: str) -> ArtifactError:
    return ArtifactError(path, f"made from {made_from} md5 {recorded}, which is now md5 {now}: stale")


def _check_splits(paths: ProjectPaths, digests: dict[str, str]) -> None:
    names = {name: relative(paths.root, paths.split(name)) for name in SPLITS}
    read = {name: digests[path] for name, path in names.items() if path in digests}
    if not read:
        return
    card = read_dataset_card(paths.dataset_card)
    for name, digest in read.items():
        recorded = card.splits[name].md5
        if recorded != digest:
            raise ArtifactError(paths.split(name), f"md5 {digest}, not the md5 {recorded} {paths.dataset_card.name} "
                                                   "records: changed or damaged since prepare wrote them")


def _check_checkpoint(paths: ProjectPaths, digests: dict[str, str], checkpoint: Path) -> None:
    """A checkpoint's recorded inputs (`inputs`: {path: md5}) against those files now; one saved before kdflow
    recorded them has nothing to compare."""
    recorded_inputs = load_checkpoint(checkpoint).get("inputs", {})
    if not isinstance(recorded_inputs, dict):
        raise ArtifactError(checkpoint, "its record of the inputs it was trained from is malformed")
    for name, recorded in recorded_inputs.items():
        now = _current(paths, digests, name)
        if now is not None and now != recorded:
            raise _stale(checkpoint, name, recorded, now)


def _check_soft_labels(paths: ProjectPaths, digests: dict[str, str]) -> None:
    manifest_path = paths.soft_labels_manifest
    manifest = read_json(manifest_path)
    try:
        files = manifest["files"].items()
        made_from = {relative(paths.root, paths.checkpoint("teacher")): manifest["teacher_checkpoint_md5"],
                     **{relative(paths.root, paths.split(name)): entry["input_md5"] for name, entry in files}}
        written = {relative(paths.root, paths.soft_labels(name)): entry["md5"] for name, entry in files}
    except (KeyError, TypeError, AttributeError):
        raise ArtifactError(manifest_path, "not a soft-label manifest (teacher_checkpoint_md5 and each file's md5 "
                                           "and input_md5 are missing or malformed)") from None
    for name, recorded in written.items():
        now = _current(paths, digests, name)
        if now is not None and now != recorded:
            raise ArtifactError(paths.root / name, f"md5 {now}, not the md5 {recorded} {manifest_path.name} records: "
                                                   "changed or damaged since soft_labels wrote them")
    for name, recorded in made_from.items():
        now = _current(paths, digests, name)
        if now is not None and now != recorded:
            raise _stale(manifest_path, name, recorded, now)


def check_inputs(paths: ProjectPaths, inputs: Sequence[Path]) -> dict[str, str]:
    """The inputs' md5s now, {path as kdflow.lineage names it: md5}; an ArtifactError for the first input made from
    other versions of the files it came from, naming what the stage that writes it must rewrite."""
    digests = {relative(paths.root, path): file_digest(path) for path in inputs}
    _check_splits(paths, digests)
    for model in MODELS:
        if relative(paths.root, paths.checkpoint(model)) in digests:
            _check_checkpoint(paths, digests, paths.checkpoint(model))
    if any((paths.root / name).is_relative_to(paths.soft_labels_dir) for name in digests):
        _check_soft_labels(paths, digests)
    return digests
