"""The same maths on 1 or 2 processes: DDP gradients of tiny TPAVI and ECMVAE models equal one process's.

Two gloo processes on the CPU each take part of a batch of 4 clips (2 + 2, or 3 + 1), wrap the model in
DistributedDataParallel and back-propagate its loss; the averaged gradients must equal those of one
process on all 4 clips (to 1e-5), and the rank-averaged loss terms its loss terms. The clips are
annotated as S4 training (first frame only) or unevenly (ranks hold different numbers of annotated
frames). The models run in eval mode: BatchNorm uses its running statistics (per-rank batch statistics
are a documented difference without ``train.sync_bn``, which gloo cannot do) and ECMVAE takes the
latent means, so both runs are deterministic; with masks given they still compute every loss term.
The AVSS variants (71 classes) take clips padded to 5 frames with different numbers of real and
annotated frames per clip and back-propagate the masked cross-entropy + AV-map loss.
"""
import functools
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from avseg.config import load_config
from avseg.models import build_model, registry
from local_ports import free_port

pytestmark = pytest.mark.slow  # spawns 2 processes (about 35 s of CPU time in all on the 2-core sandbox)

WORLD_SIZE = 2
CLIPS, SIZE = 4, 32
AVSS = ("model.num_classes=71", "model.avm_weight=0.5")
# variant -> (model name, overrides, frames per clip)
MODELS = {
    "tpavi": ("tpavi", ("model.avm_weight=0.5", "model.seg_loss=bce"), 2),
    "ecmvae": ("ecmvae", ("model.avm_weight=0.5", "model.ecmvae.shared_divergence=kl", "model.ecmvae.kl_form=released"), 2),
    "tpavi_avss": ("tpavi", AVSS + ("model.tpavi_group_size=5", "model.audio_align_bias=false"), 5),
    "ecmvae_avss": ("ecmvae", AVSS + ("model.ecmvae.shared_divergence=kl",), 5),
}
AVSS_REAL = (5, 3, 5, 2)  # real frames per AVSS clip (the rest padded)
# name -> (annotated frames per clip, clips per rank)
LAYOUTS = {"s4_2+2": ((1, 1, 1, 1), (2, 2)), "uneven_2+2": ((2, 2, 1, 1), (2, 2)), "uneven_3+1": ((1, 2, 1, 2), (3, 1)),
           "v1s_2+2": ((1, 1, 1, 1), (2, 2)), "avss_uneven_3+1": ((5, 1, 2, 2), (3, 1))}
CASES = [(model, layout) for model in ("tpavi", "ecmvae") for layout in ("s4_2+2", "uneven_2+2", "uneven_3+1")]
CASES += [(model, layout) for model in ("tpavi_avss", "ecmvae_avss") for layout in ("v1s_2+2", "avss_uneven_3+1")]


@functools.lru_cache(maxsize=None)
def _model(variant):
    """The tiny model (``SIZE`` px), seeded: the same weights in every process."""
    name, extra, _ = MODELS[variant]
    overrides = [f"model.name={name}", *registry.get(name).tiny_overrides, *extra, f"data.image_size={SIZE}"]
    torch.manual_seed(0)
    return build_model(load_config(None, overrides)).eval()


def _backward(model, batch):
    """Zero the gradients, run the training forward on ``batch`` and back-propagate; returns the outputs."""
    model.zero_grad(set_to_none=True)
    outputs = model(**batch)
    outputs["loss"].backward()
    return outputs


def _batch(variant, layout):
    generator = torch.Generator().manual_seed(1)
    counts, _ = LAYOUTS[layout]
    frames = MODELS[variant][2]
    steps = torch.arange(frames).expand(CLIPS, frames)
    annotated = steps < torch.tensor(counts).unsqueeze(1)
    if not variant.endswith("_avss"):
        return {
            "frames": torch.randn(CLIPS, frames, 3, SIZE, SIZE, generator=generator),
            "log_mel": torch.randn(CLIPS, frames, 1, 96, 64, generator=generator),
            "masks": (torch.rand(CLIPS, frames, 1, SIZE, SIZE, generator=generator) > 0.5).float(),
            "mask_valid": annotated,
        }
    frame_valid = steps < torch.tensor(AVSS_REAL).unsqueeze(1)
    return {
        "frames": torch.randn(CLIPS, frames, 3, SIZE, SIZE, generator=generator) * frame_valid[..., None, None, None],
        "log_mel": torch.randn(CLIPS, frames, 1, 96, 64, generator=generator),
        "labels": torch.randint(0, 71, (CLIPS, frames, SIZE, SIZE), generator=generator),
        "frame_valid": frame_valid,
        "mask_valid": annotated & frame_valid,
    }


def _rank_slice(layout, rank):
    _, split = LAYOUTS[layout]
    start = sum(split[:rank])
    return slice(start, start + split[rank])


def _loss_terms(outputs):
    return {name: float(value.detach()) for name, value in outputs.items() if value.dim() == 0}


def _gradients(model):
    return {name: p.grad.numpy().copy() for name, p in model.named_parameters() if p.grad is not None}



def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        from avseg.engine.distributed import DistContext, sync_batchnorm

        _, converted, message = sync_batchnorm(nn.BatchNorm2d(2), DistContext(rank, WORLD_SIZE, rank))
        results = {"sync_bn_converted": np.array(converted), "sync_bn_unavailable": np.array("unavailable" in message)}
        models = {name: nn.parallel.DistributedDataParallel(_model(name)) for name in MODELS}
        for name, layout in CASES:
            batch = {key: value[_rank_slice(layout, rank)] for key, value in _batch(name, layout).items()}
            outputs = _backward(models[name], batch)
            for term, value in _loss_terms(outputs).items():
                results[f"{name}/{layout}/term/{term}"] = np.array(value)
            for param, grad in _gradients(models[name].module).items():
                results[f"{name}/{layout}/grad/{param}"] = grad
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **results)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp_gradients")
    mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [dict(np.load(out_dir / f"rank{rank}.npz")) for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("name,layout", CASES)
def test_two_processes_give_the_single_process_gradients(two_process_results, name, layout, one_torch_thread):
    model = _model(name)
    outputs = _backward(model, _batch(name, layout))
    single = _gradients(model)
    prefix = f"{name}/{layout}/grad/"
    for rank_results in two_process_results:
        ddp = {key[len(prefix):]: value for key, value in rank_results.items() if key.startswith(prefix)}
        assert set(ddp) == set(single)
        for param, grad in single.items():
            scale = max(1.0, float(np.abs(grad).max()))
            assert np.abs(ddp[param] - grad).max() <= 1e-5 * scale, (param, np.abs(ddp[param] - grad).max())
    # The logged terms (averaged over ranks, as the trainer logs them) are the single-process terms.
    for term, value in _loss_terms(outputs).items():
        key = f"{name}/{layout}/term/{term}"
        averaged = sum(float(results[key]) for results in two_process_results) / WORLD_SIZE
        assert averaged == pytest.approx(value, rel=1e-5, abs=1e-7), term


def test_sync_bn_is_reported_unavailable_on_gloo(two_process_results):
    for results in two_process_results:
        assert not bool(results["sync_bn_converted"]) and bool(results["sync_bn_unavailable"])
