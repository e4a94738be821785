"""ONNX and TorchScript export: equal to eager PyTorch for any batch and clip length, usable by the Segmenter."""
import inspect
from importlib.util import find_spec

import numpy as np
import pytest
import torch

from avseg.checkpoint import read_checkpoint, save_checkpoint
from avseg.cli.common import run_cli
from avseg.cli.export import main
from avseg.config import load_config
from avseg.errors import CheckpointError, ConfigError
from avseg.inference.export import LogitsOnly, example_inputs, export_checkpoint, load_torchscript
from avseg.inference.segmenter import Segmenter
from avseg.models import build_model, load_model

from test_segmenter import TINY_MODEL, write_video

TINY_ECMVAE = ["model.name=ecmvae", "model.backbone.name=resnet18", "model.backbone.weights=null",
               "model.audio.name=small", "model.audio.weights=null", "model.audio.freeze=false",
               "model.neck_channels=128", "data.image_size=64"]
TINY = {"tpavi": TINY_MODEL, "ecmvae": TINY_ECMVAE}
# (batch, clip length) pairs other than the traced (2, 2): the graph must follow both axes
SHAPES = [(1, 3), (3, 1)]
TOLERANCE = 1e-4

needs_onnx = pytest.mark.skipif(find_spec("onnx") is None or find_spec("onnxruntime") is None,
                                reason="onnx and onnxruntime are not installed (pip install 'avseg[export]')")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny random TPAVI and ECMVAE checkpoints (ResNet-18, small audio encoder, 64 px)."""
    folder = tmp_path_factory.mktemp("export_ckpt")
    paths = {}
    for name, overrides in TINY.items():
        torch.manual_seed(0)
        cfg = load_config(None, overrides)
        model = build_model(cfg)
        for module in model.modules():  # non-trivial BatchNorm statistics, so eval-mode BN is really exported
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                torch.nn.init.uniform_(module.weight, 0.5, 1.5)
        paths[name] = folder / f"{name}.pth"
        save_checkpoint(paths[name], model.state_dict(), cfg)
    return paths


def assert_follows_eager(run, ckpt):
    """``run(frames, log_mel) -> logits`` equals the eager checkpoint model on every shape of SHAPES."""
    eager = LogitsOnly(load_model(ckpt)).eval()
    for seed, (batch, seconds) in enumerate(SHAPES):
        frames, log_mel = example_inputs(64, batch, seconds, seed)
        with torch.no_grad():
            got, expected = run(frames, log_mel), eager(frames, log_mel)
        assert got.shape == expected.shape == (batch, seconds, 1, 64, 64)
        torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


@needs_onnx
@pytest.mark.parametrize("name", sorted(TINY))
def test_onnx_equals_pytorch_for_any_batch_and_clip_length(tmp_path, checkpoints, name, one_torch_thread):
    from avseg.inference.onnx_runtime import OnnxSegmentationModel

    out = tmp_path / f"{name}.onnx"
    assert main(["--ckpt", str(checkpoints[name]), "--format", "onnx", "--out", str(out)]) == 0
    runtime = OnnxSegmentationModel(out)
    assert runtime.cfg.model.name == name and runtime.input_names == ["frames", "log_mel"]
    assert_follows_eager(lambda frames, log_mel: runtime(frames=frames, log_mel=log_mel)["logits"], checkpoints[name])


@pytest.mark.parametrize("name", sorted(TINY))
def test_torchscript_equals_pytorch_for_any_batch_and_clip_length(tmp_path, checkpoints, name, one_torch_thread):
    out = tmp_path / f"{name}.pt"
    export_checkpoint(checkpoints[name], out, "torchscript")
    module, cfg = load_torchscript(out)
    assert cfg.model.name == name
    assert_follows_eager(module, checkpoints[name])


@needs_onnx
def test_segmenter_with_the_onnx_model_gives_the_torch_masks(tmp_path, checkpoints, one_torch_thread):
    from avseg.inference.onnx_runtime import load_onnx_model

    video = write_video(tmp_path / "v.mp4", 2.5, fps=4)
    torch_segmenter = Segmenter.from_checkpoint(checkpoints["tpavi"], device="cpu")
    onnx_model = load_onnx_model(checkpoints["tpavi"])  # a checkpoint: exported in memory
    onnx_segmenter = Segmenter(onnx_model, onnx_model.cfg, device="cpu")
    expected, got = torch_segmenter.predict_video(video), onnx_segmenter.predict_video(video)
    assert len(got) == len(expected) == 10
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=TOLERANCE)


@needs_onnx
@pytest.mark.skipif("runtime" not in inspect.signature(Segmenter.from_checkpoint).parameters,
                    reason="Segmenter.from_checkpoint has no runtime= argument yet (the H7 report's one-line change)")
def test_segmenter_from_checkpoint_onnx_runtime(tmp_path, checkpoints, one_torch_thread):
    from avseg.inference.onnx_runtime import OnnxSegmentationModel

    exported = export_checkpoint(checkpoints["ecmvae"], tmp_path / "ecmvae.onnx", "onnx")
    frames = np.random.default_rng(0).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
    waveform = np.sin(np.arange(3 * 16000) / 7.0).astype(np.float32)
    expected = Segmenter.from_checkpoint(checkpoints["ecmvae"], device="cpu").predict_clip(frames, waveform, 16000)
    for source in (exported, checkpoints["ecmvae"]):
        segmenter = Segmenter.from_checkpoint(source, device="cpu", runtime="onnx")
        assert isinstance(segmenter.model, OnnxSegmentationModel)
        got = segmenter.predict_clip(frames, waveform, 16000)
        np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=TOLERANCE)


def test_out_at_the_checkpoint_is_refused(checkpoints, capsys):
    before = checkpoints["tpavi"].read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--ckpt", str(checkpoints["tpavi"]), "--format", "torchscript", "--out", str(checkpoints["tpavi"])])
    assert exit_info.value.code == 2
    assert "is the input --ckpt" in capsys.readouterr().err
    assert checkpoints["tpavi"].read_bytes() == before


def test_onnx_out_needs_the_onnx_suffix(tmp_path, checkpoints):
    with pytest.raises(ConfigError, match=r"--out must end in \.onnx"):
        export_checkpoint(checkpoints["tpavi"], tmp_path / "model.pt", "onnx")
    assert not (tmp_path / "model.pt").exists()


def test_a_sampling_ecmvae_is_refused_unless_overridden(tmp_path, checkpoints):
    sampling = tmp_path / "sampling.pth"
    save_checkpoint(sampling, read_checkpoint(checkpoints["ecmvae"])["model"],
                    load_config(None, TINY_ECMVAE + ["model.ecmvae.num_samples=4"]))
    existing = tmp_path / "m.pt"
    existing.write_bytes(b"previous export")
    with pytest.raises(ConfigError, match="model.ecmvae.num_samples"):
        export_checkpoint(sampling, existing, "torchscript")
    assert existing.read_bytes() == b"previous export"  # a refused export leaves the old file alone
    export_checkpoint(sampling, existing, "torchscript", overrides=["model.ecmvae.num_samples=1"])
    assert load_torchscript(existing)[1].model.ecmvae.num_samples == 1


def test_an_image_model_checkpoint_is_refused(tmp_path):
    cfg = load_config(None, ["model.name=fashion_vae", "data.name=fashion_mnist"])
    save_checkpoint(tmp_path / "vae.pth", build_model(cfg).state_dict(), cfg)
    with pytest.raises(ConfigError, match="'fashion_vae' is not an AVS model"):
        export_checkpoint(tmp_path / "vae.pth", tmp_path / "vae.pt", "torchscript")
    assert not (tmp_path / "vae.pt").exists()


@needs_onnx
def test_an_onnx_file_without_avseg_config_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from avseg.inference.onnx_runtime import load_onnx_model

    graph = helper.make_graph([helper.make_node("Identity", ["frames"], ["logits"])], "plain",
                              [helper.make_tensor_value_info("frames", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "plain.onnx")
    with pytest.raises(CheckpointError, match="carries no avseg config"):
        load_onnx_model(tmp_path / "plain.onnx")
    with pytest.raises(CheckpointError, match="no such ONNX file"):
        load_onnx_model(tmp_path / "missing.onnx")
