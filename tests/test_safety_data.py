"""Nothing in a dataset's files escapes its folder, hides a wrong layout, stretches masks or asks for unbounded memory."""
import collections
import csv
import io
import pickle
import shutil
import struct
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from avseg.cli.check_dataset import main as check_main
from avseg.cli.common import run_cli
from avseg.data.avsbench_dataset import AVSBenchDataset, read_semantic_index, read_v1_index, v1_csv_path
from avseg.data.check import check_dataset
from avseg.data.safe_pickle import load_log_mel_pickle, load_tensor_pickle
from avseg.data.synthetic import make_synthetic
from avseg.errors import DatasetError
from avseg.fileio import join_inside


def copy_root(source, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(source, root)
    return root


def rewrite_csv(path, edit):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    edit(rows)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


# ----------------------------------------------------------------------------- 2: paths stay inside their root
def test_join_inside_refuses_escapes(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert join_inside(root, "masks", "", "dog", "a_1.png") == root / "masks" / "dog" / "a_1.png"
    for part in ("../x", "/etc/passwd", "a/../../x", ".."):
        with pytest.raises(DatasetError, match=r"mask file.*would leave"):
            join_inside(root, "masks", part, what="mask file")
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(DatasetError, match=r"symbolic link"):
        join_inside(root, "link", "escaped.png", what="mask file")


@pytest.mark.parametrize("column, value", [(2, "../../x"), (2, "/tmp/abs"), (0, "../name"), (3, "a/b"), (2, "..")])
def test_v1_csv_values_that_leave_the_root_are_refused(synthetic_s4_root, tmp_path, column, value):
    root = copy_root(synthetic_s4_root, tmp_path)
    csv_path = v1_csv_path(root, "s4")

    def poison(rows):
        rows[3][column] = value

    rewrite_csv(csv_path, poison)
    header = ["name", "start_time", "category", "split"][column]
    with pytest.raises(DatasetError) as info:
        read_v1_index(root, "s4")
    message = str(info.value)
    assert str(csv_path) in message and "line 4" in message and f"{header} '{value}'" in message
    report = check_dataset(root, "s4")
    assert len(report.problems) == 1 and f"{header} '{value}'" in report.problems[0]


def test_semantic_uid_that_leaves_the_root_is_refused(tmp_path):
    root = make_synthetic(tmp_path / "semantic", task="ms3", size=64, seed=1, layout="semantic", split_sizes=(1, 1, 1), write_videos=False)

    def poison(rows):
        rows[1][rows[0].index("uid")] = "../../outside"

    rewrite_csv(root / "metadata.csv", poison)
    with pytest.raises(DatasetError, match=r"metadata\.csv, line 2: uid '\.\./\.\./outside'"):
        read_semantic_index(root)


# ----------------------------------------------------------------------------- 4: missing columns are one error
def test_missing_category_column_is_one_error(synthetic_s4_root, tmp_path, capsys):
    root = copy_root(synthetic_s4_root, tmp_path)
    csv_path = v1_csv_path(root, "s4")

    def rename(rows):
        rows[0][2] = "cat"

    rewrite_csv(csv_path, rename)
    with pytest.raises(DatasetError) as info:
        read_v1_index(root, "s4")
    message = str(info.value)
    assert str(csv_path) in message and "'category'" in message and "name, start_time, cat, split" in message
    assert check_main(["--root", str(root), "--task", "s4", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and "missing frame" not in out


def test_missing_split_column_is_one_error(synthetic_ms3_root, tmp_path):
    root = copy_root(synthetic_ms3_root, tmp_path)

    def drop_split(rows):
        for row in rows:
            del row[1]

    rewrite_csv(v1_csv_path(root, "ms3"), drop_split)
    with pytest.raises(DatasetError, match=r"ms3_meta_data\.csv: no 'split' column \(columns found: video_id\)"):
        read_v1_index(root, "ms3")


# ----------------------------------------------------------------------------- 6: errors in DataLoader workers
def test_worker_dataset_error_prints_the_original_line(synthetic_s4_root, tmp_path, capsys):
    root = copy_root(synthetic_s4_root, tmp_path)
    dataset = AVSBenchDataset(root, "s4", "val", image_size=64, feature_cache="off")
    dataset.records[0].frames[1].unlink()
    with pytest.raises(DatasetError) as direct:
        dataset[0]
    original = str(direct.value)
    assert original.startswith("missing frame: ") and "\n" not in original

    def main(argv):
        next(iter(DataLoader(dataset, batch_size=1, num_workers=1)))
        return 0

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {original}\n"


def test_worker_error_keeps_the_worker_traceback_as_a_note():
    wrapped = (
        "Caught DatasetError in DataLoader worker process 3.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\navseg.errors.DatasetError: a.png: bad\n'
    )
    error = DatasetError(wrapped)
    assert str(error) == "a.png: bad"
    assert "worker process 3" in "".join(getattr(error, "__notes__", [])) or not hasattr(error, "add_note")


# ----------------------------------------------------------------------------- 9: masks of another size
def shrink_mask(path):
    Image.open(path).resize((32, 32), Image.NEAREST).save(path)


def test_mask_of_another_size_is_an_error(synthetic_s4_root, tmp_path):
    root = copy_root(synthetic_s4_root, tmp_path)
    dataset = AVSBenchDataset(root, "s4", "val", image_size=64, feature_cache="off")
    record = dataset.records[1]
    shrink_mask(record.masks[2])
    with pytest.raises(DatasetError) as info:
        dataset[1]
    message = str(info.value)
    assert str(record.masks[2]) in message and str(record.frames[2]) in message
    assert "32x32" in message and "64x64" in message and "data.resize_masks" in message
    stretched = AVSBenchDataset(root, "s4", "val", image_size=64, feature_cache="off", resize_masks=True)[1]
    assert stretched["masks"].shape == (5, 1, 64, 64)
    report = check_dataset(root, "s4", check_log_mel=False)
    assert len(report.problems) == 1 and "32x32" in report.problems[0]
    assert check_dataset(root, "s4", check_log_mel=False, resize_masks=True).ok


def test_semantic_masks_keep_the_released_independent_resize(tmp_path):
    root = make_synthetic(tmp_path / "semantic", task="ms3", size=64, seed=1, layout="semantic", split_sizes=(1, 1, 1), write_videos=False)
    record = read_semantic_index(root)[0]
    shrink_mask(record.masks[0])
    item = AVSBenchDataset(root, "ms3", record.split, layout="semantic", image_size=64, feature_cache="off")[0]
    assert item["masks"].shape == (5, 1, 64, 64)
    assert check_dataset(root, "avss").ok


# ----------------------------------------------------------------------------- 10: what a .pkl may describe
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def legacy_storage_blob(claimed_numel, values):
    """A ``torch.storage._load_from_bytes`` blob (torch's legacy format) whose header claims ``claimed_numel`` floats."""
    buffer = io.BytesIO()
    for obj in (torch.serialization.MAGIC_NUMBER, torch.serialization.PROTOCOL_VERSION, SYS_INFO):
        pickle.dump(obj, buffer, protocol=2)
    marker = object()

    class StoragePickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", claimed_numel, None) if obj is marker else None

    StoragePickler(buffer, protocol=2).dump(marker)
    pickle.dump(["0"], buffer, protocol=2)
    payload = np.asarray(values, dtype="<f4").tobytes()
    buffer.write(struct.pack("<q", len(values)) + payload)
    return buffer.getvalue()


class _Storage:
    def __init__(self, blob):
        self.blob = blob

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.blob,))


class _Tensor:
    def __init__(self, blob, size, stride):
        self.args = (_Storage(blob), 0, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


def write_tensor_pickle(path, claimed_numel, values, size, stride):
    path.write_bytes(pickle.dumps(_Tensor(legacy_storage_blob(claimed_numel, values), size, stride)))
    return path


def test_crafted_pickles_that_tell_the_truth_load(tmp_path):
    values = np.arange(2 * 96 * 64, dtype=np.float32)
    path = write_tensor_pickle(tmp_path / "honest.pkl", len(values), values, (2, 96, 64), (96 * 64, 64, 1))
    assert torch.equal(load_tensor_pickle(path), torch.from_numpy(values).view(2, 96, 64))
    assert load_log_mel_pickle(path).shape == (2, 1, 96, 64)


def test_storage_larger_than_the_file_is_refused(tmp_path):
    path = write_tensor_pickle(tmp_path / "claims.pkl", 2**26, [0.0] * 4, (4,), (1,))
    assert path.stat().st_size < 1000
    with pytest.raises(DatasetError, match=r"claims\.pkl: .*67108864 elements"):
        load_tensor_pickle(path)


def test_view_larger_than_its_storage_is_refused(tmp_path):
    path = write_tensor_pickle(tmp_path / "expand.pkl", 96 * 64, [0.0] * (96 * 64), (10**6, 1, 96, 64), (0, 0, 64, 1))
    with pytest.raises(DatasetError, match=r"expand\.pkl: .*more elements than its storage holds"):
        load_tensor_pickle(path)


def test_counted_bytes_beyond_the_file_are_not_allocated(tmp_path):
    path = tmp_path / "bytes8.pkl"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**26) + b"x" * 100)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"bytes8\.pkl"):
            load_tensor_pickle(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24


def test_log_mel_pickles_are_capped_in_size_and_shape(tmp_path):
    official = tmp_path / "official.pkl"
    official.write_bytes(pickle.dumps(torch.zeros(5, 1, 96, 64, requires_grad=True)))
    assert load_log_mel_pickle(official).shape == (5, 1, 96, 64)
    with pytest.raises(DatasetError, match=r"official\.pkl: .*limit of 100 elements"):
        load_tensor_pickle(official, max_elements=100)
    narrow = tmp_path / "narrow.pkl"
    narrow.write_bytes(pickle.dumps(torch.zeros(5, 96, 32)))
    with pytest.raises(DatasetError, match=r"narrow\.pkl: log-mel of shape \(5, 96, 32\)"):
        load_log_mel_pickle(narrow)
