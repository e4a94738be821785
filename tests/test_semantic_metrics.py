"""AVSS metric parity: AVSSMetric against a float64 loop transcription of the official formulas."""
import math
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from avseg.evaluation import semantic_metrics
from avseg.evaluation.semantic_metrics import (AVSSMetric, classes_and_confusions, first_max_classes, frame_class_counts,
                                               frame_confusions, fused_kernel_available)

TOL = 1e-6
NUM_CLASSES = 71
needs_kernel = pytest.mark.skipif(not fused_kernel_available(), reason="the compiled AVSS kernel is not built (no C compiler at install)")
PATHS = [pytest.param(True, marks=needs_kernel, id="kernel"), pytest.param(False, id="torch")]  # AVSSMetric(fused=...)


# ----------------------------------------------------------------------------- reference (official formulas, loops)
def reference_scores(logits: torch.Tensor, labels: torch.Tensor, num_classes: int = NUM_CLASSES):
    """``_batch_miou_fscore`` + ``test.py``: softmax arg-max; per frame and class IoU (eps 2.22e-16) and F
    (beta^2 0.3, NaN -> 0), summed over frames; divided by the frames where the class is in pred ∪ GT
    (0 when never); mean over all classes; the ``noBg`` numbers drop the last class."""
    predicted = torch.softmax(logits.double(), dim=1).argmax(dim=1)
    iou_sum, f_sum, frames = [0.0] * num_classes, [0.0] * num_classes, [0] * num_classes
    for n in range(labels.shape[0]):
        for c in range(num_classes):
            pred_c, lab_c = predicted[n] == c, labels[n] == c
            inter = (pred_c & lab_c).sum().item()
            pred, lab = pred_c.sum().item(), lab_c.sum().item()
            union = pred + lab - inter
            iou_sum[c] += inter / (2.220446049250313e-16 + union)
            precision = inter / pred if pred else math.nan
            recall = inter / lab if lab else math.nan
            denominator = 0.3 * precision + recall
            f = 1.3 * precision * recall / denominator if denominator else math.nan
            f_sum[c] += 0.0 if math.isnan(f) else f
            frames[c] += union > 0
    per_class_iou = [s / k if k else 0.0 for s, k in zip(iou_sum, frames)]
    per_class_f = [s / k if k else 0.0 for s, k in zip(f_sum, frames)]
    return {
        "miou": sum(per_class_iou) / num_classes,
        "fscore": sum(per_class_f) / num_classes,
        "miou_no_last_class": sum(per_class_iou[:-1]) / (num_classes - 1),
        "fscore_no_last_class": sum(per_class_f[:-1]) / (num_classes - 1),
        "per_class_iou": np.array(per_class_iou),
        "per_class_fscore": np.array(per_class_f),
        "class_frames": np.array(frames),
    }


def assert_scores_equal(result, expected, tol=TOL):
    for key in ("miou", "fscore", "miou_no_last_class", "fscore_no_last_class"):
        assert result[key] == pytest.approx(expected[key], abs=tol), key
    np.testing.assert_allclose(result["per_class_iou"], expected["per_class_iou"], atol=tol)
    np.testing.assert_allclose(result["per_class_fscore"], expected["per_class_fscore"], atol=tol)
    np.testing.assert_array_equal(result["class_frames"], expected["class_frames"])


def clip_batch(seed: int, num_frames: int = 10, size: int = 16, padded_from: int = 5):
    """A clip-like batch: blobs of a few classes, predictions that partly match, padded frames at the end.

    Returns logits [N, 71, size, size], labels [N, size, size], frame_valid [N] and the logits the
    official model would output (zero on padded frames).
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(num_frames, size, size, dtype=torch.long)
    labels[:, 2:9, 3:10] = 7
    labels[:, 10:, 10:] = 70  # the last class: dropped by the official "noBg" numbers
    labels[1, :4, :4] = 12
    logits = 0.3 * torch.randn(num_frames, NUM_CLASSES, size, size, generator=generator)
    logits.scatter_add_(1, labels.unsqueeze(1), torch.full((num_frames, 1, size, size), 2.0))  # mostly right
    logits[:, 33, 12:, :4] += 6.0  # class 33 is predicted but never labelled
    logits[min(2, num_frames - 1)] = 0.0  # a real frame with exact ties everywhere: the first class (background) wins
    frame_valid = torch.arange(num_frames) < padded_from
    labels[~frame_valid] = 0  # padded labels are background
    official_logits = logits.clone()
    official_logits[~frame_valid] = 0.0
    logits[~frame_valid] = torch.randn(int((~frame_valid).sum()), NUM_CLASSES, size, size, generator=generator)
    return logits, labels, frame_valid, official_logits


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("fused", PATHS)
def test_matches_reference_with_padded_frames_absent_and_unlabelled_classes(fused):
    logits, labels, frame_valid, official_logits = clip_batch(0)
    metric = AVSSMetric(NUM_CLASSES, fused=fused)
    metric.update(logits, labels, frame_valid)
    official = metric.compute()
    assert_scores_equal(official, reference_scores(official_logits, labels))
    assert official["class_frames"][0] == 10 and official["class_frames"][33] > 0
    assert official["per_class_iou"][33] == 0.0 and official["per_class_fscore"][33] == 0.0
    assert (official["class_frames"] == 0).sum() > 60  # never-seen classes count as 0 in the mean
    real = metric.compute("real_frames")
    assert_scores_equal(real, reference_scores(logits[frame_valid], labels[frame_valid]))
    assert real["class_frames"][0] == 5 and real["miou"] != pytest.approx(official["miou"], abs=1e-4)


@pytest.mark.parametrize("fused", PATHS)
def test_without_frame_flags_every_frame_scores_as_given(fused):
    logits, labels, _, _ = clip_batch(1, num_frames=4, padded_from=4)
    metric = AVSSMetric(fused=fused)
    metric.update(logits, labels)
    expected = reference_scores(logits, labels)
    assert_scores_equal(metric.compute(), expected)
    assert_scores_equal(metric.compute("real_frames"), expected)


def test_accumulates_over_batches_like_the_official_sums():
    batches = [clip_batch(seed) for seed in (2, 3, 4)]
    metric = AVSSMetric()
    for logits, labels, frame_valid, _ in batches:
        metric.update(logits, labels, frame_valid)
    all_official = torch.cat([b[3] for b in batches])
    all_labels = torch.cat([b[1] for b in batches])
    assert_scores_equal(metric.compute(), reference_scores(all_official, all_labels))


@pytest.mark.parametrize("fused", PATHS)
def test_one_metric_across_sizes_and_dtypes(fused):
    """One metric fed batches of other sizes and dtypes (and padded batches, scored in runs) holds the
    same sums as a fresh metric per batch."""
    batches = [clip_batch(6, num_frames=4, size=16, padded_from=4), clip_batch(7, num_frames=6, size=24, padded_from=3),
               clip_batch(8, num_frames=2, size=8, padded_from=2)]
    batches[1] = (batches[1][0].double(), *batches[1][1:])
    reused, fresh_state = AVSSMetric(fused=fused), torch.zeros_like(AVSSMetric().state())
    for logits, labels, frame_valid, _ in batches:
        reused.update(logits, labels, frame_valid)
        fresh = AVSSMetric(fused=fused)
        fresh.update(logits, labels, frame_valid)
        fresh_state += fresh.state()
    assert torch.equal(reused.state(), fresh_state)
    assert_scores_equal(fresh.compute(), reference_scores(batches[-1][3], batches[-1][1]))


def test_counts_equal_the_official_histc_bins():
    """The official ``torch.histc(v + 1, bins=C, min=1, max=C)`` bins map class c to bin c, for every c."""
    logits, labels, _, _ = clip_batch(5, num_frames=3, padded_from=3)
    labels[0, 1:6] = torch.arange(80).view(5, 16) % NUM_CLASSES  # every class, so every bin is checked
    predicted = torch.softmax(logits, dim=1).argmax(dim=1) + 1
    target = labels.float() + 1
    intersection = predicted.float() * (predicted.float() == target).float()
    counts = frame_class_counts(predicted - 1, labels, NUM_CLASSES)
    for i in range(3):
        histograms = [torch.histc(v[i].float(), bins=NUM_CLASSES, min=1, max=NUM_CLASSES) for v in (intersection, predicted, target)]
        assert torch.equal(counts[i], torch.stack(histograms).long())


def test_ddp_split_merges_to_the_same_result():
    logits, labels, frame_valid, _ = clip_batch(6)
    whole = AVSSMetric()
    whole.update(logits, labels, frame_valid)
    first, second = AVSSMetric(), AVSSMetric()
    first.update(logits[:3], labels[:3], frame_valid[:3])
    second.update(logits[3:], labels[3:], frame_valid[3:])
    reduced = first.state() + second.state()  # what all_reduce(SUM) of the two states gives
    merged = AVSSMetric()
    merged.load_state(reduced)
    first.merge(second.state())
    for metric in (merged, first):
        for variant in ("official", "real_frames"):
            assert_scores_equal(metric.compute(variant), whole.compute(variant), tol=1e-12)
    with pytest.raises(ValueError, match="state"):
        merged.merge(torch.zeros(3))


def test_class_maps_from_elsewhere_give_the_same_sums():
    logits, labels, frame_valid, _ = clip_batch(7)
    from_logits, from_classes = AVSSMetric(), AVSSMetric()
    from_logits.update(logits, labels, frame_valid)
    from_classes.update_classes(logits.argmax(dim=1), labels, frame_valid)
    assert torch.equal(from_logits.state(), from_classes.state())


@pytest.mark.parametrize("fused", PATHS)
def test_rejects_bad_inputs(fused):
    metric = AVSSMetric(fused=fused)
    logits, labels, frame_valid, _ = clip_batch(8, num_frames=2, padded_from=2)
    with pytest.raises(ValueError, match=r"logits must be \[N, 71, H, W\]"):
        metric.update(logits[:, :70], labels)
    with pytest.raises(ValueError, match=r"labels must lie in 0..70"):
        metric.update(logits, labels + 70)
    with pytest.raises(ValueError, match="integer class indices"):
        metric.update(logits, labels.float())
    with pytest.raises(ValueError, match="one entry per frame"):
        metric.update(logits, labels, frame_valid[:1])
    with pytest.raises(ValueError, match="variant"):
        metric.compute("padded")


# ----------------------------------------------------------------------------- arg-max
def test_first_max_classes_matches_argmax_with_ties_and_special_values():
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(3, NUM_CLASSES, 96, 100, generator=generator)  # 9600 pixels: more than one block
    logits[0, :, :5] = 0.0  # all tied: class 0
    logits[1, 40, :3] = logits[1].amax(dim=0)[:3]  # two channels tie at the maximum: the lower index wins
    logits[1, 60, :3] = logits[1, 40, :3]
    expected = logits.argmax(dim=1)
    assert torch.equal(first_max_classes(logits), expected)
    assert torch.equal(first_max_classes(logits.double()), expected)
    assert torch.equal(first_max_classes(logits.half()), logits.half().float().argmax(dim=1))
    logits[2, 5, 0, 0] = float("nan")
    logits[2, 9, 0, 1] = float("inf")
    special = first_max_classes(logits)
    assert special[2, 0, 0] == 0 and special[2, 0, 1] == 0  # the official softmax turns these pixels into NaN
    small = torch.randn(2, 5, 3, 3, generator=generator)
    assert torch.equal(first_max_classes(small), small.argmax(dim=1))


def test_first_max_classes_on_any_layout_class_count_and_dtype():
    generator = torch.Generator().manual_seed(10)
    wide = torch.randn(2, 200, 5, 7, generator=generator)  # more classes than a float exponent could pack
    assert torch.equal(first_max_classes(wide), wide.argmax(dim=1))
    strided = torch.randn(3, NUM_CLASSES, 9, 11, generator=generator).transpose(2, 3)  # not contiguous
    assert torch.equal(first_max_classes(strided), strided.argmax(dim=1))
    channels_last = strided.contiguous(memory_format=torch.channels_last)
    assert torch.equal(first_max_classes(channels_last), strided.argmax(dim=1))
    rounded = strided.bfloat16()  # ties appear after rounding: still the first maximum
    assert torch.equal(first_max_classes(rounded), rounded.float().argmax(dim=1))
    blank = torch.full((1, NUM_CLASSES, 2, 2), float("-inf"))
    assert torch.equal(first_max_classes(blank), torch.zeros(1, 2, 2, dtype=torch.long))
    assert first_max_classes(torch.zeros(0, NUM_CLASSES, 4, 4)).shape == (0, 4, 4)


# ----------------------------------------------------------------------------- compiled kernel
def special_logits(num_frames: int, num_classes: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Random logits with ties, NaN, +inf, all -inf and all-equal pixels (``[N, C, H, W]`` float32)."""
    logits = torch.randn(num_frames, num_classes, height, width, generator=torch.Generator().manual_seed(seed))
    logits[0, :, 0, :3] = 0.0  # all tied: class 0
    logits[0, num_classes // 2, 1, :4] = logits[0, -1, 1, :4] = logits[0, :, 1, :4].amax(dim=0) + 1  # a tie at the top
    logits[-1, 1, 0, 0] = float("nan")
    logits[-1, 0, 0, 1] = float("nan")  # a NaN in the first class, where the running maximum starts
    logits[-1, -1, 0, 2] = float("inf")
    logits[-1, :, 0, 3] = float("-inf")
    return logits


@needs_kernel
@pytest.mark.parametrize("shape", [(1, NUM_CLASSES, 48, 50), (3, NUM_CLASSES, 40, 70), (5, 2, 9, 7), (2, 200, 5, 6)])
def test_kernel_equals_the_torch_path(shape):
    """Class maps and confusions of the compiled kernel equal ``max_pool2d`` + ``bincount``: first maximum on
    ties, class 0 for NaN / infinite pixels, frames split over threads (3 frames on 2 threads), pixel counts
    past one block (2400, 2800) and not a multiple of it, 2 and 200 classes, int32 labels."""
    logits = special_logits(*shape, seed=sum(shape))
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        kernel = classes_and_confusions(logits, labels, fused=True)
    finally:
        torch.set_num_threads(threads)
    torch_path = classes_and_confusions(logits, labels, fused=False)
    assert torch.equal(kernel[0], torch_path[0]) and torch.equal(kernel[1], torch_path[1])
    assert kernel[0].dtype == torch.long and kernel[1].shape == (shape[0], shape[1], shape[1])
    assert torch.equal(kernel[1], frame_confusions(logits.argmax(dim=1).masked_fill(~torch.isfinite(logits).all(dim=1) |
                                                   torch.isinf(logits.amax(dim=1)), 0), labels.long(), shape[1]))
    assert kernel[0][-1, 0, :4].tolist() == [0, 0, 0, 0]


@needs_kernel
def test_kernel_rejects_buffers_of_the_wrong_kind():
    kernel = semantic_metrics._class_confusion.argmax_confusion
    logits = np.zeros((2, 3, 4), np.float32)
    labels, classes, confusion = np.zeros((2, 4), np.int64), np.zeros((2, 4), np.int64), np.zeros((2, 3, 3), np.int64)
    kernel(logits, labels, classes, confusion, 3, 0, 2)
    assert confusion[:, 0, 0].tolist() == [4, 4]
    with pytest.raises(ValueError, match="logits: expected float items of 4 bytes"):
        kernel(logits.astype(np.float64), labels, classes, confusion, 3, 0, 2)
    with pytest.raises(ValueError, match="labels: expected integer items"):
        kernel(logits, labels.astype(np.float64), classes, confusion, 3, 0, 2)
    with pytest.raises(ValueError, match="logits: expected 24 items, got 12"):
        kernel(logits[:1].copy(), labels, classes, confusion, 3, 0, 2)
    with pytest.raises(ValueError, match="classes: expected a C-contiguous writable buffer"):
        kernel(logits, labels, classes.T, confusion, 3, 0, 2)
    with pytest.raises(ValueError, match="frames 1..3 outside the 2 frames"):
        kernel(logits, labels, classes, confusion, 3, 1, 3)
    labels[1, 2] = 3
    with pytest.raises(ValueError, match=r"labels: 1 values outside 0..2"):
        kernel(logits, labels, classes, confusion, 3, 0, 2)


def test_kernel_is_built_where_a_compiler_and_headers_exist():
    """``pip install`` builds the kernel when it can: a silently failed build would leave the slow path."""
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if not (shutil.which("cc") or shutil.which("gcc")) or not headers.exists():
        pytest.skip("no C compiler or Python headers here: the torch path is the expected one")
    assert fused_kernel_available(), "a C compiler is present but avseg.evaluation._class_confusion is not built: reinstall avseg (make install)"


def test_fused_true_without_the_kernel_is_an_error(monkeypatch):
    monkeypatch.setattr(semantic_metrics, "_class_confusion", None)
    with pytest.raises(RuntimeError, match="not built"):
        AVSSMetric(fused=True)
    logits, labels = torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="not built"):
        classes_and_confusions(logits, labels, fused=True)
    assert torch.equal(classes_and_confusions(logits, labels)[0], logits.argmax(dim=1))
