"""VGGish: torchvggish key layout, TF flatten order, freezing, weight files, and the TF PCA postprocessor."""
import fractions
import io
import warnings
import zipfile

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from avseg.audio.vggish import (
    MissingWeightsWarning,
    SmallAudioEncoder,
    VGGish,
    VGGishPostprocessor,
    build_audio_encoder,
    load_pca_params,
    load_vggish_weights,
)
from avseg.config import AudioEncoderConfig
from avseg.errors import CheckpointError, ConfigError

TORCHVGGISH_SHAPES = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}  # fmt: skip


def audio_cfg(**kwargs):
    return OmegaConf.merge(OmegaConf.structured(AudioEncoderConfig), kwargs)


@pytest.fixture(scope="module")
def vggish():
    torch.manual_seed(0)
    return VGGish(final_relu=False, freeze=True)


def test_torchvggish_keys_shapes_and_flatten_order(vggish):
    assert {k: tuple(v.shape) for k, v in vggish.state_dict().items()} == TORCHVGGISH_SHAPES
    log_mel = torch.randn(3, 1, 96, 64)
    out = vggish(log_mel)
    assert out.shape == (3, 128) and (out < 0).any()  # final_relu=False: pre-activation embedding
    # torchvggish: features, then transpose(1, 3), transpose(1, 2) (NCHW -> NHWC) before flattening.
    x = vggish.features(log_mel)
    assert x.shape == (3, 512, 6, 4)
    x = torch.transpose(torch.transpose(x, 1, 3), 1, 2).contiguous().view(3, -1)
    assert torch.allclose(out, vggish.embeddings(x), atol=1e-6)
    with_relu = VGGish(final_relu=True)
    with_relu.load_state_dict(vggish.state_dict())
    assert torch.allclose(with_relu(log_mel), out.clamp_min(0), atol=1e-6)


def test_frozen_by_default_trainable_by_config(vggish):
    assert vggish.frozen and not any(p.requires_grad for p in vggish.parameters())
    vggish.train()
    assert not vggish.training
    assert not vggish(torch.randn(1, 1, 96, 64)).requires_grad
    small = build_audio_encoder(audio_cfg(name="small", freeze=False))
    assert isinstance(small, SmallAudioEncoder)
    out = small(torch.randn(4, 1, 96, 64))
    assert out.shape == (4, 128) and out.requires_grad
    frozen_small = build_audio_encoder(audio_cfg(name="small", freeze=True))
    assert not any(p.requires_grad for p in frozen_small.parameters())


def test_weight_files(vggish, tmp_path):
    torch.save(vggish.state_dict(), tmp_path / "vggish-10086976.pth")
    log_mel = torch.randn(2, 1, 96, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingWeightsWarning)  # weights given: no warning
        model = build_audio_encoder(audio_cfg(name="vggish", weights=str(tmp_path / "vggish-10086976.pth"), final_relu=False))
    assert torch.equal(model(log_mel), vggish(log_mel))
    # torchaudio names are mapped; a wrong shape is named (the big fc1 is shrunk to keep the file small).
    torchaudio_names = {k.replace("features.", "features_network.").replace("embeddings.", "embedding_network."): v
                        for k, v in vggish.state_dict().items()}
    torchaudio_names["embedding_network.0.weight"] = torch.zeros(4096, 10)
    torch.save(torchaudio_names, tmp_path / "vggish_torchaudio.pt")
    with pytest.raises(CheckpointError, match=r"not a VGGish state dict[^\n]*: embeddings\.0\.weight file \(4096, 10\)"):
        load_vggish_weights(model, tmp_path / "vggish_torchaudio.pt")
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing: features\.0\.bias"):
        load_vggish_weights(model, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="not found"):
        build_audio_encoder(audio_cfg(name="vggish", weights=str(tmp_path / "none.pth")))
    with pytest.warns(UserWarning, match="frozen VGGish built without weights"):
        build_audio_encoder(audio_cfg(name="vggish"))
    with pytest.raises(ConfigError, match="unknown audio encoder"):
        build_audio_encoder(audio_cfg(name="wav2vec"))


def tf_postprocess(embeddings, eigen_vectors, means):
    """TF ``vggish_postprocess.Postprocessor.postprocess``, written out in numpy."""
    pca_applied = np.dot(eigen_vectors, (embeddings.T - means.reshape(-1, 1))).T
    clipped = np.clip(pca_applied, -2.0, 2.0)
    quantized = (clipped - -2.0) * (255.0 / (2.0 - -2.0))
    return quantized.astype(np.uint8)


def test_pca_postprocessor_matches_tf_numpy():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(128, 128)) / 8
    means = rng.normal(size=128)
    embeddings = rng.normal(size=(16, 128)).astype(np.float32) * 3  # enough spread that clipping happens
    post = VGGishPostprocessor(torch.from_numpy(vectors), torch.from_numpy(means))
    ours = post(torch.from_numpy(embeddings))
    expected = tf_postprocess(embeddings, vectors, means)
    assert ours.dtype == torch.uint8
    assert np.array_equal(ours.numpy(), expected)
    assert (expected == 0).any() and (expected == 255).any()
    # Truncation, not rounding: 0.999 of a step still quantises down.
    one = VGGishPostprocessor()
    value = torch.tensor([[(1.999 * 4 / 255) - 2.0] * 128])
    assert int(one(value)[0, 0]) == 1


def _as_numpy1_pickle(path):
    """Rewrite a torch.save zip so its pickle names ``numpy.core.multiarray`` (how numpy 1.x spells it)."""
    raw = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as rewritten:
        for info in raw.infolist():
            data = raw.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            rewritten.writestr(info, data)
    path.write_bytes(out.getvalue())


def test_pca_params_files_load_safely(tmp_path):
    rng = np.random.default_rng(1)
    vectors, means = rng.normal(size=(128, 128)), rng.normal(size=128)
    torch.save({"pca_eigen_vectors": vectors, "pca_means": means}, tmp_path / "pca_numpy.pth")
    torch.save({"pca_eigen_vectors": vectors.astype(np.float32), "pca_means": means.reshape(128, 1).astype(np.float32)},
               tmp_path / "pca_numpy1.pth")
    _as_numpy1_pickle(tmp_path / "pca_numpy1.pth")
    torch.save({"pca_eigen_vectors": torch.from_numpy(vectors), "pca_means": torch.from_numpy(means)}, tmp_path / "pca_torch.pth")
    np.savez(tmp_path / "vggish_pca_params.npz", pca_eigen_vectors=vectors, pca_means=means)
    for name in ("pca_numpy.pth", "pca_torch.pth", "vggish_pca_params.npz"):
        loaded_vectors, loaded_means = load_pca_params(tmp_path / name)
        assert loaded_vectors.dtype == torch.float64 and torch.equal(loaded_vectors, torch.from_numpy(vectors))
        assert torch.equal(loaded_means, torch.from_numpy(means))
    loaded_vectors, loaded_means = load_pca_params(tmp_path / "pca_numpy1.pth")
    assert torch.allclose(loaded_vectors, torch.from_numpy(vectors), atol=1e-6) and loaded_means.shape == (128,)
    # Anything beyond plain numeric arrays is refused before it is built.
    torch.save({"pca_eigen_vectors": vectors, "pca_means": fractions.Fraction(1, 3)}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_pca_params(tmp_path / "unsafe.pth")
    torch.save({"pca_eigen_vectors": vectors[:64], "pca_means": means}, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"\(128, 128\)"):
        load_pca_params(tmp_path / "short.pth")


def test_vggish_with_postprocessor(tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "pca.npz", pca_eigen_vectors=rng.normal(size=(128, 128)), pca_means=rng.normal(size=128))
    with pytest.raises(ConfigError, match="pca_weights"):
        build_audio_encoder(audio_cfg(name="vggish", freeze=False, pca_weights=str(tmp_path / "pca.npz")))
    with pytest.warns(UserWarning):
        model = build_audio_encoder(audio_cfg(name="vggish", pca_weights=str(tmp_path / "pca.npz")))
    out = model(torch.randn(2, 1, 96, 64))
    assert out.dtype == torch.float32 and out.shape == (2, 128)
    assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 255
    assert {"pproc.pca_eigen_vectors", "pproc.pca_means"} <= set(model.state_dict())
