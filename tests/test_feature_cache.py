"""The per-frame feature cache: each frame's backbone once, one frame's decoder per output, same masks."""
import numpy as np
import pytest
import torch

from avseg.config import load_config
from avseg.inference.feature_cache import ClipJob, FeatureCache, unsupported_reason
from avseg.inference.segmenter import Segmenter
from avseg.inference.video import probe_video
from avseg.models import build_model, registry
from test_segmenter import write_video

VARIANTS = [  # (model, overrides, frames per clip)
    ("tpavi", [], 5),
    ("tpavi", ["model.tpavi_stages=[1,3]"], 5),
    ("tpavi", ["model.tpavi_group_size=2", "model.num_classes=3", "model.audio_align_bias=false"], 4),
    ("ecmvae", [], 5),
    ("ecmvae", ["model.ecmvae.latent_path=false"], 5),
    ("ecmvae", ["model.ecmvae.shared_only=true"], 5),
    ("ecmvae", ["model.tpavi_group_size=2", "model.num_classes=3"], 5),  # groups of 2, 2 and 1 frames
]


def tiny_model(name, extra=(), image_size=None):
    """A tiny random model in eval mode whose BatchNorm layers are not the identity (so they are exercised)."""
    torch.manual_seed(0)
    overrides = [f"model.name={name}", "model.backbone.weights=null", "model.audio.weights=null",
                 *registry.get(name).tiny_overrides, *extra]
    if image_size is not None:
        overrides.append(f"data.image_size={image_size}")
    cfg = load_config(None, overrides)
    model = build_model(cfg).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                module.running_mean.normal_(generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.normal_(generator=generator)
                module.bias.normal_(generator=generator)
    return model, cfg


@pytest.mark.parametrize("name, extra, length", VARIANTS)
def test_cached_frame_equals_the_clip_forward(name, extra, length):
    """Two clips: every slot decoded alone from cached terms gives the model's clip logits (binary or 3 classes,
    TPAVI over the whole clip or over groups)."""
    model, cfg = tiny_model(name, extra)
    size = cfg.data.image_size
    frames, log_mel = torch.randn(2, length, 3, size, size), torch.randn(2, length, 1, 96, 64)
    with torch.inference_mode():
        expected = model(frames, log_mel)["logits"]
        cache = FeatureCache(model)
        jobs = []
        for clip in range(2):
            terms, window = cache.encode_frames(frames[clip]), cache.encode_window(log_mel[clip])
            jobs += [ClipJob(terms, window, slot) for slot in range(length)]
        got = cache.decode(jobs, (size, size)).reshape(expected.shape)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, fps", [("tpavi", None), ("ecmvae", 5)])
def test_predict_video_with_the_cache_equals_whole_clips(tmp_path, name, fps):
    """A 25 fps mp4 of 5.5 s (windows 0 and the end-aligned ~0.5), output at 25 fps (TPAVI) or 5 fps (ECMVAE, to
    keep the whole-clip reference short): same probabilities to 1e-5; at 25 fps each frame is encoded once."""
    video = write_video(tmp_path / "v.mp4", 5.5, fps=25, size=(48, 40))
    model, cfg = tiny_model(name, image_size=32)
    cached = Segmenter(model, cfg, device="cpu", batch_size=2).predict_video(video, fps=fps)
    whole = Segmenter(model, cfg, device="cpu", batch_size=2, frame_cache=False).predict_video(video, fps=fps)
    frames = probe_video(video).num_frames
    assert len(cached) == len(whole) == (frames if fps is None else 28)
    assert len(cached.window_starts) == 2 and 0 < cached.window_starts[1] < 1
    np.testing.assert_allclose(cached.probabilities, whole.probabilities, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cached.masks, whole.masks)
    assert whole.frames_encoded == whole.num_clips * whole.clip_seconds
    if fps is None:
        assert cached.frames_encoded == frames == 138  # every displayed frame once


def test_lower_output_rate_and_uncached_models(tmp_path):
    """Output at 4 fps from a 25 fps video: only the frames some clip needs are encoded; sampling ECMVAE is not cached."""
    video = write_video(tmp_path / "v.mp4", 5.0, fps=25, size=(48, 40))
    model, cfg = tiny_model("tpavi", image_size=32)
    cached = Segmenter(model, cfg, device="cpu").predict_video(video, fps=4)
    whole = Segmenter(model, cfg, device="cpu", frame_cache=False).predict_video(video, fps=4)
    np.testing.assert_allclose(cached.probabilities, whole.probabilities, atol=1e-5, rtol=0)
    assert cached.frames_encoded < 125
    sampling, _ = tiny_model("ecmvae", ["model.ecmvae.sample_at_test=true"])
    assert "samples its latent codes" in unsupported_reason(sampling)
    assert Segmenter(sampling, cfg, device="cpu").cache is None
    with pytest.raises(ValueError, match="not a TPAVI or ECMVAE"):
        FeatureCache(torch.nn.Identity())


@pytest.mark.parametrize("name, extra", [("tpavi", ["model.num_classes=3", "model.tpavi_group_size=5"]),
                                         ("ecmvae", ["model.num_classes=3"])])
def test_semantic_predict_video_with_the_cache_equals_whole_clips(tmp_path, name, extra):
    """3-class models (TPAVI over 5-frame groups as in official AVSS): softmax probabilities [N, 3, S, S] and class
    maps agree with whole clips."""
    video = write_video(tmp_path / "v.mp4", 5.5, fps=10, size=(48, 40))
    model, cfg = tiny_model(name, extra, image_size=32)
    cached = Segmenter(model, cfg, device="cpu").predict_video(video)
    whole = Segmenter(model, cfg, device="cpu", frame_cache=False).predict_video(video)
    assert cached.num_classes == 3 and cached.probabilities.shape == (55, 3, 32, 32)
    np.testing.assert_allclose(cached.probabilities, whole.probabilities, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cached.class_maps, whole.class_maps)
