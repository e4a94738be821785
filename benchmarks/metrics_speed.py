"""Speed of the vectorised AVSBench metrics against transcriptions of the official code.

* S4/MS3 (binary): the loop is a plain transcription of the official ``Eval_Fmeasure``/``_eval_pr`` and
  ``mask_iou`` (one comparison, product and two sums per frame and threshold), the implementation the
  official test script runs.
* AVSS (71 classes): ``official_avss_sums`` transcribes ``calc_color_miou_fscore`` /
  ``_batch_miou_fscore`` (softmax, arg-max + 1, three ``torch.histc`` per frame, float32), against
  :class:`avseg.evaluation.semantic_metrics.AVSSMetric` ``update``, once with the compiled kernel
  (``avseg/evaluation/_class_confusion.c``: arg-max and confusion counts in one read of the logits; the
  default wherever it was built) and once on the pure-torch path (``fused=False``: ``max_pool2d`` +
  ``bincount``, taken where no C compiler was present at install); a last line gives the time of one
  read of the logits (``torch.sum``), the memory-bandwidth floor of any exact arg-max, and of the
  pooling kernel of the torch path asked for the maxima only (``max_pool2d`` without indices over the
  same channels-last view): the floor of that path.

Both sides are timed on the same random batches, interleaved; the table shows the best time per batch
(the least disturbed by other processes on a shared machine), the median, the speed-up of the best
times, the same for the process CPU time (all threads; less sensitive to time-slicing on a loaded
machine, though memory stalls still count) and the largest difference between the two results (AVSS: the batch's mIoU and F over all 71
classes, as ``test.py`` would report for a one-batch test set).

    .venv/bin/python benchmarks/metrics_speed.py [--frames 20] [--size 224] [--repeats 5] [--threads 2] [--metrics avss]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from avseg.evaluation import avsbench_fscore, avsbench_miou
from avseg.evaluation.semantic_metrics import AVSSMetric, fused_kernel_available, pixels_as_channels

AVSS_CLASSES = 71
ROW_NAMES = {"fscore": "F-score", "miou": "mIoU", "avss": "AVSS mIoU + F (71 classes)"}
AVSS_PATHS = {None: "compiled kernel", False: "torch path"}  # AVSSMetric(fused=...) -> row label


def loop_fscore(logits: torch.Tensor, masks: torch.Tensor, num_thresholds: int = 255) -> float:
    """The official F-measure, one threshold at a time (``[N, H, W]`` logits and {0,1} masks)."""
    probs = torch.sigmoid(logits)
    thresholds = torch.linspace(0, 1 - 1e-10, num_thresholds)
    curve_sum, counted = torch.zeros(num_thresholds), 0
    for frame in range(probs.shape[0]):
        if torch.mean(masks[frame]) == 0.0:
            continue
        precision, recall = torch.zeros(num_thresholds), torch.zeros(num_thresholds)
        for k in range(num_thresholds):
            predicted = (probs[frame] >= thresholds[k]).float()
            true_pos = (predicted * masks[frame]).sum()
            precision[k] = true_pos / (predicted.sum() + 1e-20)
            recall[k] = true_pos / (masks[frame].sum() + 1e-20)
        curve = 1.3 * precision * recall / (0.3 * precision + recall)
        curve[curve != curve] = 0
        curve_sum += curve
        counted += 1
    return (curve_sum / counted).max().item() if counted else 0.0


def loop_miou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    """The official ``mask_iou`` (0.5 threshold, empty-mask rule, eps 1e-7)."""
    num_pixels = masks.shape[-1] * masks.shape[-2]
    empty = masks.sum(2).sum(1) == 0
    predicted = (torch.sigmoid(logits) > 0.5).int()
    inter = (predicted * masks).sum(2).sum(1)
    union = torch.max(predicted, masks).sum(2).sum(1)
    inter[empty] = ((1 - masks) * (1 - predicted)).sum(2).sum(1)[empty]
    union[empty] = num_pixels
    return (torch.sum(inter / (union + 1e-7)) / masks.shape[0]).item()


def official_avss_sums(logits: torch.Tensor, labels: torch.Tensor):
    """``calc_color_miou_fscore`` of one batch (official ``avss/utils/compute_color_metrics.py``, float32).

    ``logits`` ``[N, C, H, W]``, ``labels`` ``[N, H, W]`` int64 → per-class IoU sum, F sum, class frames.
    """
    nclass = logits.shape[1]
    pred = torch.softmax(logits, dim=1)
    predict = torch.argmax(pred, 1) + 1
    target = labels.float() + 1
    predict = predict.float() * (target > 0).float()
    intersection = predict * (predict == target).float()
    cls_count = torch.zeros(nclass).float()
    ious = torch.zeros(nclass).float()
    fscores = torch.zeros(nclass).float()
    for i in range(target.shape[0]):
        area_inter = torch.histc(intersection[i].cpu(), bins=nclass, min=1, max=nclass)
        area_pred = torch.histc(predict[i].cpu(), bins=nclass, min=1, max=nclass)
        area_lab = torch.histc(target[i].cpu(), bins=nclass, min=1, max=nclass)
        area_union = area_pred + area_lab - area_inter
        iou = 1.0 * area_inter.float() / (2.220446049250313e-16 + area_union.float())
        ious += iou
        cls_count[torch.nonzero(area_union).squeeze(-1)] += 1
        precision = area_inter / area_pred
        recall = area_inter / area_lab
        fscore = (1 + 0.3) * precision * recall / (0.3 * precision + recall)
        fscore[fscore != fscore] = 0
        fscores += fscore
    return ious, fscores, cls_count


def official_avss_scores(logits: torch.Tensor, labels: torch.Tensor):
    """mIoU and F of one batch as ``test.py`` finishes them (per-class sum / frames, NaN -> 0, mean of 71)."""
    ious, fscores, cls_count = official_avss_sums(logits, labels)
    miou_pc, f_pc = ious / cls_count, fscores / cls_count
    miou_pc[torch.isnan(miou_pc)] = 0
    f_pc[torch.isnan(f_pc)] = 0
    return torch.mean(miou_pc).item(), torch.mean(f_pc).item()


def avseg_avss_scores(logits: torch.Tensor, labels: torch.Tensor, fused=None):
    metric = AVSSMetric(logits.shape[1], fused=fused)
    metric.update(logits, labels)
    result = metric.compute()
    return result["miou"], result["fscore"]


def class_maxima(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel maxima ``[N, H·W, 1, 1]`` of ``[N, C, H, W]`` logits by the pooling kernel alone (no indices)."""
    return torch.nn.functional.max_pool2d(pixels_as_channels(logits), kernel_size=(1, logits.shape[1]))


def _timed(fn, *args, repeats: int):
    """``([(wall s, process CPU s)] per call, last result)``."""
    times, result = [], None
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn(*args)
        times.append((time.perf_counter() - start, time.process_time() - cpu_start))
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="frames per batch (official: 4 clips x 5)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5, help="batches (each timed once per implementation)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--metrics", default="fscore,miou,avss", help="comma-separated subset of fscore, miou, avss")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = set(args.metrics.split(","))
    if not chosen or not chosen <= set(ROW_NAMES):
        parser.error(f"--metrics: expected a comma-separated subset of {', '.join(ROW_NAMES)}, got '{args.metrics}'")

    generator = torch.Generator().manual_seed(0)
    rows = {ROW_NAMES[key]: [[], [], 0.0] for key in ("fscore", "miou") if key in chosen}
    avss_paths = [fused for fused in AVSS_PATHS if fused is False or fused_kernel_available()]
    if "avss" in chosen:
        if not fused_kernel_available():
            print("note: the compiled AVSS kernel is not built (no C compiler at install?); timing the torch path only")
        rows.update({f"{ROW_NAMES['avss']}, {AVSS_PATHS[fused]}": [[], [], 0.0] for fused in avss_paths})
    read_once = []  # torch.sum of the AVSS logits: one read of the 71-class batch, the floor of any arg-max
    pool_only = []  # max_pool2d without indices over the class axis: the arg-max kernel's own floor
    for repeat in range(args.repeats):
        logits = torch.randn(args.frames, args.size, args.size, generator=generator) * 4
        masks = (torch.rand(args.frames, args.size, args.size, generator=generator) < 0.3).float()
        masks[0] = 0  # one empty ground truth per batch exercises the skip / background rules
        for key, loop_fn, fast_fn in (("fscore", loop_fscore, avsbench_fscore), ("miou", loop_miou, avsbench_miou)):
            if key not in chosen:
                continue
            name = ROW_NAMES[key]
            fast_fn(logits, masks)  # warm-up
            loop_times, loop_value = _timed(loop_fn, logits, masks, repeats=1)
            fast_times, fast_value = _timed(fast_fn, logits, masks, repeats=10)
            rows[name][0] += loop_times
            rows[name][1] += fast_times
            rows[name][2] = max(rows[name][2], abs(loop_value - fast_value))
        if "avss" not in chosen:
            continue
        class_logits = torch.randn(args.frames, AVSS_CLASSES, args.size, args.size, generator=generator)
        blocks = torch.randint(0, 8, (args.frames, 1, args.size // 16, args.size // 16), generator=generator)
        labels = torch.nn.functional.interpolate(blocks.float(), size=(args.size, args.size)).long()[:, 0]  # 8 classes
        class_logits.scatter_add_(1, labels[:, None], torch.full(labels[:, None].shape, 2.5))  # mostly right
        official_times, official_values = _timed(official_avss_scores, class_logits, labels, repeats=1)
        for fused in avss_paths:
            avseg_avss_scores(class_logits, labels, fused)  # warm-up
            fast_times, fast_values = _timed(avseg_avss_scores, class_logits, labels, fused, repeats=3)
            row = rows[f"{ROW_NAMES['avss']}, {AVSS_PATHS[fused]}"]
            row[0] += official_times
            row[1] += fast_times
            row[2] = max(row[2], *(abs(a - b) for a, b in zip(official_values, fast_values)))
        read_once += [wall for wall, _ in _timed(torch.sum, class_logits, repeats=3)[0]]
        pool_only += [wall for wall, _ in _timed(class_maxima, class_logits, repeats=3)[0]]

    print(f"batch: {args.frames} frames at {args.size}x{args.size}, torch threads {args.threads}, {args.repeats} batches")
    print("| metric | official-style best (median), s/batch | avseg best (median), ms/batch | speed-up (best) | "
          "CPU time best: official s / avseg ms | speed-up (CPU time) | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for name, (loop_times, fast_times, diff) in rows.items():
        (loop_walls, loop_cpus), (fast_walls, fast_cpus) = zip(*loop_times), zip(*fast_times)
        loop_best, fast_best, loop_cpu, fast_cpu = min(loop_walls), min(fast_walls), min(loop_cpus), min(fast_cpus)
        print(
            f"| {name} | {loop_best:.3f} ({statistics.median(loop_walls):.3f}) | "
            f"{fast_best * 1e3:.1f} ({statistics.median(fast_walls) * 1e3:.1f}) | {loop_best / fast_best:.0f}x | "
            f"{loop_cpu:.3f} / {fast_cpu * 1e3:.1f} | {loop_cpu / max(fast_cpu, 1e-9):.0f}x | {diff:.1e} |"
        )
    if read_once:
        print(f"\nAVSS floor: one read of the {args.frames}x{AVSS_CLASSES}x{args.size}x{args.size} float32 logits "
              f"(torch.sum) takes {min(read_once) * 1e3:.1f} ms (best); the pooling kernel without indices "
              f"(maxima only, the torch path's floor) {min(pool_only) * 1e3:.1f} ms (best)")


if __name__ == "__main__":
    main()
