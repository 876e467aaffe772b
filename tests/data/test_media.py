"""Image folders, image-byte columns and text columns as rows (kdflow.media), and their one-line errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kdflow.config import ConfigError, validate
from kdflow.media import read
from kdflow.sources import DataError
from tasks.prepare import build_splits


def png(colour: tuple[int, int, int], size: tuple[int, int] = (4, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_params(**data) -> object:
    base = {"source_classes": ["a", "b"], "target_classes": ["c", "d"], "target_labels_per_class": 2,
            "target_val_per_class": 2}
    return validate({"data": {**base, **data}}).data


def test_an_image_is_resized_and_normalised_per_channel(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "images" / name / f"{i}.png").write_bytes(png((255, 0, 51) if name == "a" else (0, 0, 0)))
    data = data_params(source={"kind": "images", "path": "images"},
                       images={"size": [3, 2], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.25, 0.2]})
    rows = read(data.source, tmp_path, "data.source", True, data)
    assert rows.features.shape == (4, 3, 3, 2)
    assert rows.sample_id.tolist() == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    assert rows.labels.tolist() == ["a", "a", "b", "b"]
    # (255/255 - 0.5)/0.5 = 1, (0 - 0.5)/0.25 = -2, (51/255 - 0.5)/0.2 = -1.5; black: -1, -2, -2.5
    np.testing.assert_allclose(rows.features[0, :, 1, 1], [1.0, -2.0, -1.5], rtol=1e-6)
    np.testing.assert_allclose(rows.features[3, :, 0, 0], [-1.0, -2.0, -2.5], rtol=1e-6)


def test_an_image_folder_gives_every_split(tmp_path, image_folder):
    image_folder(tmp_path / "data/raw/images", ["a", "b", "c", "d"], 10, size=8)
    params = validate({"data": {"source": {"kind": "images", "path": "data/raw/images"},
                                "transfer": {"kind": "images", "path": "data/raw/images"},
                                "source_classes": ["a", "b"], "target_classes": ["c", "d"],
                                "target_labels_per_class": 3, "target_val_per_class": 3, "images": {"size": [8, 8]}}})
    splits = build_splits(params, tmp_path)
    rows = {name: len(ids) for name, (ids, _, _) in splits.items()}
    # per source class 10: 2 test, 1 validation, 7 train; per target class 2 test, 3 + 3; transfer: the 40 images
    # less the 20 source and 16 target rows
    assert rows == {"source_train": 14, "source_val": 2, "source_test": 4, "target_train": 6, "target_val": 6,
                    "target_test": 4, "transfer": 4}
    assert splits["source_train"][1].shape[1:] == (3, 8, 8)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda folder: (folder / "a" / "1.png").write_bytes(b"not a png"),
     r"^images/a/1.png: not a readable image \(UnidentifiedImageError: .*\); fix: replace it with a PNG or JPEG"),
    (lambda folder: [p.unlink() for p in (folder / "b").glob("*.png") if p.name != "000.png"],
     r"^images/b \(data.source\): class 'b' has 1 image, fewer than data.images.min_per_class 2; fix: add images"),
])
def test_a_bad_image_folder_is_one_line_naming_the_file(tmp_path, image_folder, damage, message):
    image_folder(tmp_path / "images", ["a", "b"], 3, size=4)
    damage(tmp_path / "images")
    data = data_params(source={"kind": "images", "path": "images"})
    with pytest.raises(DataError, match=message):
        read(data.source, tmp_path, "data.source", True, data)


def test_a_parquet_column_of_image_bytes(tmp_path):
    data = data_params(source={"kind": "file", "path": "images.parquet", "image_column": "image"},
                       images={"size": [2, 2], "mean": [0, 0, 0], "std": [1, 1, 1]})
    # Hugging Face datasets store an image as {bytes, path}
    records = [{"bytes": png((0, 0, 0)), "path": None}, {"bytes": png((255, 255, 255)), "path": None}]
    pd.DataFrame({"image": records, "label": ["b", "a"]}).to_parquet(tmp_path / "images.parquet")
    np.testing.assert_array_equal(read(data.source, tmp_path, "data.source", True, data).features[:, 0, 0, 0], [0.0, 1.0])
    frame = pd.DataFrame({"image": [png((255, 255, 255)), png((0, 0, 0))], "label": ["a", "b"]})
    frame.to_parquet(tmp_path / "images.parquet")
    rows = read(data.source, tmp_path, "data.source", True, data)
    np.testing.assert_array_equal(rows.features[:, 0, 0, 0], [1.0, 0.0])
    frame.loc[1, "image"] = b""
    frame.to_parquet(tmp_path / "images.parquet")
    with pytest.raises(DataError, match=r"^images.parquet: image column 'image' holds no image bytes at data row 2"):
        read(data.source, tmp_path, "data.source", True, data)


def test_texts_become_the_saved_tokenizers_ids(tmp_path, save_tokenizer):
    save_tokenizer(tmp_path / "tokenizer")
    index = {word: float(i) for word, i in json.loads((tmp_path / "tokenizer/tokenizer.json").read_text())["model"]["vocab"].items()}
    pd.DataFrame({"text": ["red apple", "sky"], "label": ["a", "b"]}).to_csv(tmp_path / "t.csv", index=False)
    data = data_params(source={"kind": "file", "path": "t.csv", "text_column": "text"},
                       text={"tokenizer": "tokenizer", "max_length": 5})
    rows = read(data.source, tmp_path, "data.source", True, data)
    unknown, cls, sep = index["[UNK]"], index["[CLS]"], index["[SEP]"]
    # 'red' is no word of the vocabulary; padding is [PAD], id 0
    assert index["[PAD]"] == 0.0 and "red" not in index
    assert rows.features.tolist() == [[cls, unknown, index["apple"], sep, 0.0], [cls, index["sky"], sep, 0.0, 0.0]]


def test_an_empty_text_is_named_with_its_row(tmp_path, save_tokenizer):
    save_tokenizer(tmp_path / "tokenizer")
    pd.DataFrame({"text": ["sea", "  ", "ice"], "label": ["a", "b", "a"]}).to_csv(tmp_path / "t.csv", index=False)
    data = data_params(source={"kind": "file", "path": "t.csv", "text_column": "text"}, text={"tokenizer": "tokenizer"})
    with pytest.raises(DataError, match=r"^t.csv: text column 'text' is empty or not text in 1 row \(first at data row 2\)"):
        read(data.source, tmp_path, "data.source", True, data)


def test_a_text_column_needs_a_tokenizer():
    with pytest.raises(ConfigError, match=r"data.source.text_column needs data.text: \{tokenizer: "):
        data_params(source={"kind": "file", "path": "t.csv", "text_column": "text"})
