"""Images and texts as the pipeline's rows: image folders, columns of image bytes, columns of texts.

An image is decoded with Pillow, converted to RGB (or grey), resized and normalised as `data.images` says; a text
becomes token ids with the Hugging Face tokenizer saved in `data.text.tokenizer`. Every file is read and checked
before `prepare` writes anything; an error names the file and the fix, as kdflow.sources does for tables.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from kdflow.artifacts import file_digest
from kdflow.media_specs import ImageSpec, TextSpec
from kdflow.sources import DataError, Rows, _plural, read_rows, resolve

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def decode(data: bytes, spec: ImageSpec, shown: str) -> np.ndarray:
    """One image as (channels, height, width) float32, resized and normalised."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB" if spec.channels == 3 else "L").resize(
                (spec.size[1], spec.size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{shown}: not a readable image ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                        "fix: replace it with a PNG or JPEG, or delete it") from None
    pixels = pixels.reshape(spec.size[0], spec.size[1], spec.channels).transpose(2, 0, 1)
    mean = np.resize(np.array(spec.mean, np.float32), spec.channels).reshape(-1, 1, 1)
    std = np.resize(np.array(spec.std, np.float32), spec.channels).reshape(-1, 1, 1)
    return ((pixels - mean) / std).astype(np.float32)


def _decoded(files: list[Path], spec: ImageSpec, root: Path) -> np.ndarray:
    shape = (spec.channels, *spec.size)
    images = np.empty((len(files), *shape), np.float32)
    for i, file in enumerate(files):
        images[i] = decode(file.read_bytes(), spec, str(file.relative_to(root) if file.is_relative_to(root) else file))
    return images


def read_image_folder(spec, root: Path, where: str, labelled: bool, images: ImageSpec) -> Rows:
    """`path/<class>/<image>` (labelled) or every image under `path` (unlabelled); sample ids are the files'
    paths relative to the folder, so a renamed file is a new sample."""
    folder = resolve(root, spec.path)
    if not folder.is_dir():
        raise DataError(f"{spec.path} ({where}.path): no such folder; fix: put the images there (one subfolder per "
                        f"class{' ' if labelled else ', or any layout for unlabelled images'}) or correct {where}.path")
    if not labelled:
        files = _image_files(folder)
        if not files:
            raise DataError(f"{spec.path} ({where}.path): no PNG or JPEG image in the folder; fix: add images")
        return Rows(spec.path, np.array([f.relative_to(folder).as_posix() for f in files]),
                    _decoded(files, images, root), None)
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{spec.path} ({where}.path): no class folders; fix: one subfolder per class, named after "
                        "the class, holding its images")
    files, labels = [], []
    for class_folder in classes:
        members = _image_files(class_folder)
        if len(members) < images.min_per_class:
            raise DataError(f"{spec.path}/{class_folder.name} ({where}): class '{class_folder.name}' has "
                            f"{_plural(len(members), 'image')}, fewer than data.images.min_per_class {images.min_per_class}; "
                            "fix: add images to it, or move the folder out")
        files += members
        labels += [class_folder.name] * len(members)
    return Rows(spec.path, np.array([f.relative_to(folder).as_posix() for f in files]),
                _decoded(files, images, root), np.array(labels))


def image_column(values, shown: str, column: str, images: ImageSpec) -> np.ndarray:
    """A column of image bytes (or Hugging Face datasets' {'bytes': ...} records) as decoded images."""
    decoded = np.empty((len(values), images.channels, *images.size), np.float32)
    for row, value in enumerate(values):
        data = value.get("bytes") if isinstance(value, dict) else value
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise DataError(f"{shown}: image column '{column}' holds no image bytes at data row {row + 1} "
                            f"({type(value).__name__}); fix: store each image's PNG or JPEG file bytes")
        decoded[row] = decode(bytes(data), images, f"{shown}, column '{column}', data row {row + 1}")
    return decoded


def text_column(values, shown: str, column: str, text: TextSpec, root: Path) -> np.ndarray:
    """A column of texts as token ids (rows, max_length), float32 as every feature is stored (exact below 2**24)."""
    strings = [value if isinstance(value, str) else None for value in values]
    empty = [row for row, value in enumerate(strings) if value is None or not value.strip()]
    if empty:
        raise DataError(f"{shown}: text column '{column}' is empty or not text in {_plural(len(empty))} (first at data "
                        f"row {empty[0] + 1}); fix: drop those rows or write their text")
    ids = np.asarray(tokenizer(text, root)(strings, padding="max_length", truncation=True,
                                           max_length=text.max_length)["input_ids"], dtype=np.int64)
    if ids.max(initial=0) >= 2**24:
        raise DataError(f"{text.tokenizer} (data.text.tokenizer): token ids beyond 2**24 cannot be stored exactly")
    return ids.astype(np.float32)


def tokenizer(text: TextSpec, root: Path):
    folder = resolve(root, text.tokenizer)
    if not folder.is_dir():
        raise DataError(f"{text.tokenizer} (data.text.tokenizer): no such folder; fix: save the model's tokenizer "
                        "there with tokenizer.save_pretrained(folder)")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError("data.text: tokenising needs transformers; fix: pip install -e \".[zoo]\"") from None
    try:  # a local folder only, and never code the folder names (trust_remote_code stays off)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{text.tokenizer} (data.text.tokenizer): not a saved tokenizer ({str(exc).splitlines()[0]}); "
                        "fix: save it with tokenizer.save_pretrained(folder)") from None


def folder_digest(folder: Path) -> str:
    """md5 over every image's relative path and md5: any added, removed, renamed or changed image changes it."""
    digest = hashlib.md5()
    for file in _image_files(folder):
        digest.update(f"{file.relative_to(folder).as_posix()}\0{file_digest(file)}\n".encode())
    return digest.hexdigest()


def read(spec, root: Path, where: str, labelled: bool, data) -> Rows:
    """Any data section's rows: an image folder, a table with an image or text column, or numeric columns."""
    if spec.kind == "images":
        return read_image_folder(spec, root, where, labelled, data.images)
    rows = read_rows(spec, root, where, labelled)
    if spec.image_column is not None:
        features = image_column(rows.features, spec.path, spec.image_column, data.images)
    elif spec.text_column is not None:
        features = text_column(rows.features, spec.path, spec.text_column, data.text, root)
    else:
        return rows
    return Rows(rows.path, rows.sample_id, features, rows.labels)
