from __future__ import annotations

import numpy as np
import pytest
from archives import CLASSES, make_batches_archive, make_batches_arrays, make_image_folder_archive
from conftest import prepare_params

from cvae_pipeline.data.archive import extract_atomically
from cvae_pipeline.data.prepared import channel_stats, dataset_facts, load_prepared, make_splits, save_prepared
from cvae_pipeline.data.readers import DecodedDataset, Split, read_dataset
from cvae_pipeline.data.splits import stratified_split, stratified_subset
from cvae_pipeline.errors import ArchiveError, DatasetError


def extracted(tmp_path, maker, *args, **kwargs):
    archive = maker(tmp_path / "a.tar.gz", *args, **kwargs)
    extract_atomically(archive, tmp_path / "raw")
    return tmp_path / "raw"


def test_reads_python_batches_exactly(tmp_path):
    ds = read_dataset(extracted(tmp_path, make_batches_archive, 5, 2))
    expected = make_batches_arrays(5, 2)
    assert ds.classes == CLASSES and ds.layout == "python-batches"
    for split in ("train", "test"):
        x, y = expected[split]
        got = ds.splits[split]
        assert got.images.dtype == np.uint8 and got.images.shape == x.shape
        # batches are shuffled on disk: compare the multisets of (label, image bytes)
        as_set = lambda imgs, labels: sorted((int(label), i.tobytes()) for i, label in zip(imgs, labels))  # noqa: E731
        assert as_set(got.images, got.labels) == as_set(x, y)


def test_reads_image_folders_with_labels_matching_folders(tmp_path):
    ds = read_dataset(extracted(tmp_path, make_image_folder_archive, 4, 2))
    assert ds.classes == CLASSES and ds.layout == "image-folders"
    train = ds.splits["train"]
    assert train.images.shape == (40, 3, 32, 32) and train.images.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == [4] * 10
    # each synthetic class has its own mean colour; JPEG keeps it within a few levels
    for label in range(10):
        mean_red = train.images[train.labels == label, 0].mean()
        assert abs(mean_red - (label * 25) % 256) < 12


def test_batches_refuse_code_in_pickles(tmp_path):
    raw = extracted(tmp_path, make_batches_archive, 1, 1)
    (raw / "cifar-10-batches-py" / "test_batch").write_bytes(
        b"cos\nsystem\n(S'echo pwned'\ntR."  # a pickle that would run a shell command
    )
    with pytest.raises(ArchiveError, match="refused to load os.system"):
        read_dataset(raw)


def test_mismatched_class_folders_are_reported(tmp_path):
    raw = extracted(tmp_path, make_image_folder_archive, 1, 1)
    (raw / "test" / "truck").rename(raw / "test" / "lorry")
    with pytest.raises(DatasetError, match="class folders differ"):
        read_dataset(raw)


def test_image_folders_are_indexed_as_torchvision_indexes_them(tmp_path):
    """The hand-written index (prepare imports no torch) against ``ImageFolder``'s own: nested
    folders, upper-case and foreign extensions, a linked sub-folder, files sorted per class."""
    from torchvision.datasets.folder import find_classes, make_dataset

    from cvae_pipeline.data.readers import IMAGE_EXTENSIONS, class_folders, index_image_folders

    raw = extracted(tmp_path, make_image_folder_archive, 3, 1)
    train = raw / "train"
    (train / "cat" / "deeper" / "more").mkdir(parents=True)
    for name in ("b.JPG", "a.png", "notes.txt", "c.jpeg.bak"):
        (train / "cat" / "deeper" / "more" / name).write_bytes(b"x")
    (train / "dog" / "linked").symlink_to(train / "cat" / "deeper")
    (train / "bird" / "z.webp").write_bytes(b"x")

    classes, class_to_idx = find_classes(str(train))
    assert class_folders(train) == classes
    assert index_image_folders(train, classes) == make_dataset(str(train), class_to_idx, extensions=IMAGE_EXTENSIONS)


def test_a_class_folder_without_images_is_named(tmp_path):
    raw = extracted(tmp_path, make_image_folder_archive, 1, 1)
    for image in (raw / "test" / "ship").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match=r"test/ship: no images in this class folder \(looked for \.jpg"):
        read_dataset(raw)


def test_wrong_image_size_is_reported(tmp_path):
    from PIL import Image

    raw = extracted(tmp_path, make_image_folder_archive, 1, 1)
    Image.new("RGB", (64, 64)).save(raw / "train" / "cat" / "big.jpg")
    with pytest.raises(DatasetError, match="big.jpg: image is 64x64, expected 32x32"):
        read_dataset(raw)


def toy_dataset(train_per_class=50, test_per_class=20, n_classes=10) -> DecodedDataset:
    rng = np.random.default_rng(0)

    def split(k):
        labels = np.repeat(np.arange(n_classes), k)
        images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
        images[:, 0, 0, 0] = np.arange(len(labels)) % 256  # make rows distinguishable
        return Split(images, labels)

    return DecodedDataset(
        [f"c{i}" for i in range(n_classes)], {"train": split(train_per_class), "test": split(test_per_class)}
    )


def per_class(split: Split) -> list[int]:
    return np.bincount(split.labels).tolist()


def test_validation_split_is_stratified_disjoint_and_seeded():
    ds = toy_dataset()
    splits = make_splits(ds, prepare_params(val_fraction=0.2, seed=3))
    assert per_class(splits["val"]) == [10] * 10 and per_class(splits["train"]) == [40] * 10
    kept, held = stratified_split(ds.splits["train"].labels, 0.2, seed=3)
    assert not set(kept) & set(held) and len(kept) + len(held) == 500
    again, _ = stratified_split(ds.splits["train"].labels, 0.2, seed=3)
    other, _ = stratified_split(ds.splits["train"].labels, 0.2, seed=4)
    assert np.array_equal(kept, again) and not np.array_equal(kept, other)


def test_subsets_are_stratified_per_class():
    ds = toy_dataset()
    splits = make_splits(ds, prepare_params(val_fraction=0.1, train_subset=100, test_subset=50))
    assert per_class(splits["train"]) == [10] * 10
    assert per_class(splits["test"]) == [5] * 10
    assert per_class(splits["val"]) == [5] * 10  # carved from the full train set first


def test_subset_larger_than_available_names_the_param():
    with pytest.raises(DatasetError, match=r"prepare.train_subset: 1000 is more than the 450"):
        make_splits(toy_dataset(), prepare_params(train_subset=1000))
    with pytest.raises(DatasetError, match=r"prepare.test_subset: 5 is fewer than the 10 classes"):
        make_splits(toy_dataset(), prepare_params(test_subset=5))


def test_subset_of_everything_is_identity():
    labels = np.repeat(np.arange(3), 4)
    assert stratified_subset(labels, 12, 0).tolist() == list(range(12))


def test_missing_class_is_rejected():
    ds = toy_dataset()
    test = ds.splits["test"]
    keep = test.labels != 7
    ds.splits["test"] = Split(test.images[keep], test.labels[keep])
    with pytest.raises(DatasetError, match=r"test: classes \[7\] have no images"):
        make_splits(ds, prepare_params())


def test_channel_stats_match_numpy():
    images = np.random.default_rng(1).integers(0, 256, (300, 3, 32, 32), dtype=np.uint8)
    mean, std = channel_stats(images, chunk=64)
    x = images.astype(np.float64) / 255
    assert np.allclose(mean, x.mean(axis=(0, 2, 3))) and np.allclose(std, x.std(axis=(0, 2, 3)))


def test_save_and_load_round_trip_memory_mapped(tmp_path):
    ds = toy_dataset()
    splits = make_splits(ds, prepare_params())
    facts = dataset_facts(splits, ds.classes)
    assert facts["train"]["images"] == 450 and facts["val"]["per_class"]["c0"] == 5
    save_prepared(tmp_path / "prepared", splits, ds.classes, {"facts": facts})
    loaded = load_prepared(tmp_path / "prepared", "train")
    assert isinstance(loaded.images, np.memmap)
    assert np.array_equal(loaded.images, splits["train"].images)
    assert loaded.labels.dtype == np.int64 and loaded.classes == ds.classes
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]  # no temporary leftovers


def test_load_missing_split_says_how_to_fix(tmp_path):
    with pytest.raises(DatasetError, match="run `dvc repro prepare` first"):
        load_prepared(tmp_path, "train")
