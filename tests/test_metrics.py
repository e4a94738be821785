"""AVSBench metric parity: the vectorised metrics against a straightforward transcription of the official formulas."""
import numpy as np
import pytest
import torch

from avseg.evaluation import avsbench_fscore, avsbench_miou, batch_independent_scores, frame_scores, official_scores
from avseg.evaluation.metrics import fscore_thresholds, threshold_bins

TOL = 1e-6


# ----------------------------------------------------------------------------- reference (official formulas, loops)
def reference_miou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    """``mask_iou``: sigmoid > 0.5; empty GT -> background fraction; eps 1e-7 per denominator; mean over frames."""
    probs = torch.sigmoid(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits)
    total = 0.0
    n, h, w = masks.shape
    for i in range(n):
        pred = (probs[i] > 0.5).double()
        gt = masks[i].double()
        if gt.sum() == 0:
            inter = ((1 - pred) * (1 - gt)).sum().item()
            union = float(h * w)
        else:
            inter = (pred * gt).sum().item()
            union = torch.maximum(pred, gt).sum().item()
        total += inter / (union + 1e-7)
    return total / n


def reference_fscore(logits: torch.Tensor, masks: torch.Tensor) -> float:
    """``Eval_Fmeasure``: 255 float32 thresholds, p >= t, beta^2 0.3, eps 1e-20, NaN -> 0, empty GT skipped."""
    probs = torch.sigmoid(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits)
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    curve_sum, counted = [0.0] * 255, 0
    for i in range(masks.shape[0]):
        gt = masks[i].double()
        if gt.mean() == 0:
            continue
        for k in range(255):
            pred = (probs[i] >= thresholds[k]).double()
            tp = (pred * gt).sum().item()
            precision = tp / (pred.sum().item() + 1e-20)
            recall = tp / (gt.sum().item() + 1e-20)
            denominator = 0.3 * precision + recall
            f = 1.3 * precision * recall / denominator if denominator > 0 else 0.0
            curve_sum[k] += 0.0 if f != f else f
        counted += 1
    return max(c / counted for c in curve_sum) if counted else 0.0


def _random_case(seed: int, n: int = 5, size=(24, 20), scale: float = 4.0, empty_frames=(0,)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, *size, generator=generator) * scale
    masks = (torch.rand(n, *size, generator=generator) < 0.35).float()
    for i in empty_frames:
        masks[i] = 0
    return logits, masks


def _assert_parity(logits, masks):
    assert avsbench_miou(logits, masks) == pytest.approx(reference_miou(logits, masks), abs=TOL)
    assert avsbench_fscore(logits, masks) == pytest.approx(reference_fscore(logits, masks), abs=TOL)


# ----------------------------------------------------------------------------- hand-made cases
def test_all_empty_masks():
    logits, _ = _random_case(0)
    masks = torch.zeros_like(logits)
    _assert_parity(logits, masks)
    assert avsbench_fscore(logits, masks) == 0.0  # every frame skipped
    expected = (torch.sigmoid(logits) <= 0.5).float().mean().item()
    assert avsbench_miou(logits, masks) == pytest.approx(expected, abs=TOL)


def test_full_masks_and_perfect_predictions():
    logits, _ = _random_case(1)
    full = torch.ones_like(logits)
    _assert_parity(logits, full)
    perfect = torch.where(full > 0, 20.0, -20.0)
    assert avsbench_miou(perfect, full) == pytest.approx(1.0, abs=TOL)
    assert avsbench_fscore(perfect, full) == pytest.approx(1.0, abs=TOL)
    assert avsbench_miou(-perfect, full) == pytest.approx(0.0, abs=TOL)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_random_batches(seed):
    _assert_parity(*_random_case(seed, empty_frames=(seed % 5,)))


def test_random_batch_without_empty_frames_and_odd_size():
    _assert_parity(*_random_case(5, n=3, size=(17, 31), scale=1.0, empty_frames=()))


def test_extreme_and_special_logits():
    logits, masks = _random_case(6, n=4)
    logits[0, :3] = float("inf")
    logits[0, 3:6] = float("-inf")
    logits[1, :4] = 0.0  # sigmoid exactly 0.5: not foreground for mIoU (> 0.5), reaches thresholds <= 0.5 for F
    logits[2, :2] = 90.0
    logits[3, :2] = float("nan")
    _assert_parity(logits, masks)


def test_logits_exactly_at_thresholds():
    """Logits whose sigmoid lands on (and 1 ulp around) every threshold: the bins must follow float32 ``>=``."""
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    clamped = thresholds.double().clamp(1e-6, 1 - 1e-6)
    centre = torch.log(clamped / (1 - clamped)).float()
    columns, up, down = [centre], centre, centre
    for _ in range(6):  # walk six float32 steps up and down from each threshold's logit
        up = torch.nextafter(up, torch.tensor(float("inf")))
        down = torch.nextafter(down, torch.tensor(float("-inf")))
        columns += [up, down]
    logits = torch.stack(columns, dim=1)  # [255, 13]
    assert (torch.sigmoid(logits) == thresholds[:, None]).sum() > 255  # many probabilities hit a threshold exactly
    logits = logits.reshape(1, 85, 39)
    masks = (torch.arange(85 * 39) % 3 == 0).float().reshape(1, 85, 39)
    _assert_parity(logits, masks)


def test_threshold_bins_exhaustive_near_thresholds():
    values = []
    for t in fscore_thresholds():
        value = np.float32(t)
        for direction in (-1.0, 2.0):
            neighbour = value
            for _ in range(3):
                neighbour = np.nextafter(neighbour, np.float32(direction))
                values.append(neighbour)
        values.append(value)
    values = np.array(values + [0.0, 1.0, 0.5, np.nan, 1e-45], dtype=np.float32)
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    expected = np.array([(torch.tensor(v) >= thresholds).sum().item() for v in values])
    np.testing.assert_array_equal(threshold_bins(values), expected)
    np.testing.assert_array_equal(threshold_bins(values.astype(np.float64)), expected)


def test_float64_and_half_logits():
    logits, masks = _random_case(7, n=3)
    _assert_parity(logits.double(), masks)
    _assert_parity(logits.half(), masks)


def test_no_frames():
    empty = torch.zeros(0, 8, 8)
    assert avsbench_miou(empty, empty) == 0.0 and avsbench_fscore(empty, empty) == 0.0
    assert frame_scores(empty, empty).fcurve.shape == (0, 255)


def test_bool_masks_accepted_and_non_binary_rejected():
    logits, masks = _random_case(8, n=2)
    assert avsbench_fscore(logits, masks.bool()) == avsbench_fscore(logits, masks)
    with pytest.raises(ValueError, match="only 0 and 1"):
        avsbench_miou(logits, masks * 0.5)
    with pytest.raises(ValueError, match="one shape"):
        avsbench_fscore(logits, masks[:, :-1])


# ----------------------------------------------------------------------------- dataset-level aggregation
def test_official_scores_are_the_mean_of_batch_scores_and_batch_dependent():
    logits, masks = _random_case(9, n=11, empty_frames=(0, 7))
    scores = frame_scores(logits, masks)
    batch_ids = np.array([0] * 4 + [1] * 4 + [2] * 3)
    official = official_scores(scores, batch_ids)
    chunks = [(0, 4), (4, 8), (8, 11)]
    assert official["miou"] == pytest.approx(np.mean([reference_miou(logits[a:b], masks[a:b]) for a, b in chunks]), abs=TOL)
    assert official["fscore"] == pytest.approx(np.mean([reference_fscore(logits[a:b], masks[a:b]) for a, b in chunks]), abs=TOL)

    independent = batch_independent_scores(scores)
    assert independent["miou"] == pytest.approx(reference_miou(logits, masks), abs=TOL)
    assert independent["fscore"] == pytest.approx(reference_fscore(logits, masks), abs=TOL)
    # One batch holding everything: the two variants agree.
    assert official_scores(scores, np.zeros(11))["fscore"] == pytest.approx(independent["fscore"], abs=1e-12)


def test_batch_of_empty_ground_truth_counts_as_zero_f():
    logits, masks = _random_case(10, n=4, empty_frames=(0, 1))
    scores = frame_scores(logits, masks)
    official = official_scores(scores, np.array([0, 0, 1, 1]))
    assert official["fscore"] == pytest.approx((0.0 + reference_fscore(logits[2:], masks[2:])) / 2, abs=TOL)
