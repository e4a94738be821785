"""A browser demo (Gradio): upload an mp4 or pick a bundled synthetic clip, see what sounds.

For one video the page shows the overlay video with its own sound, a frame strip, and the same clip
segmented with two audio counterfactuals beside it (the evaluator's ``shuffle`` / ``silent`` idea
for a single clip):

* **shuffled**: the clip's own sound shifted circularly by half its length (the second half plays
  first), so every second is segmented with the sound of another moment of the same clip;
* **silent**: the sound replaced by silence (:func:`avseg.inference.segmenter.silence`), as
  ``--allow-silent`` does.

The model runs once per audio version; moving the threshold slider only redraws the masks. Nothing
is fetched from the network: analytics are off, the theme uses the browser's own fonts, and the
server listens on 127.0.0.1 unless told otherwise. The model code (:class:`WebDemo`) needs no Gradio;
:func:`build_app` (extra ``avseg[web]``) builds the page.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from avseg.audio.vggish_input import SAMPLE_RATE
from avseg.data.synthetic import clip_video_frames, render_clip, write_mp4
from avseg.errors import AvsegError, ConfigError, MediaError
from avseg.inference import overlay
from avseg.inference.outputs import strip_indices
from avseg.inference.segmenter import MediaInput, Prediction, Segmenter, silence
from avseg.inference.video import Mp4Writer, choose_fps, iter_frames_at

PathLike = Union[str, os.PathLike]
VARIANTS = ("normal", "shuffled", "silent")
VARIANT_TITLES = {"normal": "its own sound", "shuffled": "shuffled sound (shifted by half the clip)",
                  "silent": "silence"}
SHUFFLE_RULE = ("**Shuffled** = the clip's own sound shifted circularly by half its length (the second half "
                "plays first), so each second is segmented with the sound of another moment of the same clip. "
                "**Silent** = the sound replaced by silence.")
DEFAULT_WEB_FPS = 5.0  # output frames per second: each needs its own clip, three times (one per audio version)
DEFAULT_MAX_SECONDS = 30.0
STRIP_FRAMES = 6


def shifted_sound(waveform: np.ndarray, duration: float) -> np.ndarray:
    """The first ``duration`` s of 16 kHz ``waveform [L]`` (silence-padded), shifted circularly by half its length."""
    length = int(math.ceil(duration * SAMPLE_RATE))
    sound = np.zeros(length, np.float32)
    sound[:min(length, len(waveform))] = waveform[:length]
    return np.roll(sound, length // 2)


def audio_variants(media: MediaInput) -> Dict[str, MediaInput]:
    """``normal`` (``media`` itself), ``shuffled`` (:func:`shifted_sound`) and ``silent`` versions of one input."""
    info = media.info
    return {
        "normal": media,
        "shuffled": MediaInput(info, shifted_sound(media.waveform, info.duration), silent=media.silent),
        "silent": MediaInput(info, silence(info.duration), silent=True),
    }


def write_synthetic_clip(path: PathLike, seed: int, task: str = "ms3", size: int = 128) -> Path:
    """An mp4 (H.264 + AAC) of one synthetic clip from the project's generator (:mod:`avseg.data.synthetic`)."""
    clip = render_clip(np.random.default_rng(seed), task, size, video_id=f"synthetic_{task}_{seed}")
    write_mp4(Path(path), clip_video_frames(clip), clip.waveform)
    return Path(path)


def bundled_clips(folder: PathLike, count: int = 3, size: int = 128) -> List[Path]:
    """``count`` synthetic MS3 clips (5 s, several sources switching on and off) written into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_synthetic_clip(folder / f"synthetic_ms3_{seed}.mp4", seed, "ms3", size) for seed in range(count)]


@dataclass
class Segmented:
    """One input segmented with each audio version (``VARIANTS`` order)."""

    inputs: Dict[str, MediaInput]
    predictions: Dict[str, Prediction]


@dataclass
class Rendered:
    """The files of one rendering: an overlay mp4 per audio version, the strip PNG and a summary."""

    videos: Dict[str, Path]
    strip: Path
    summary: str


class WebDemo:
    """The demo's work, without Gradio: segment an upload three ways, draw the results as files.

    Args:
        segmenter: the model (:class:`Segmenter`).
        workdir: folder for the output files (one sub-folder per rendering).
        max_fps: output frame rate cap (default 5: each output frame is one forward pass per audio version).
        max_seconds: longer uploads are refused (:class:`MediaError`).
    """

    def __init__(self, segmenter: Segmenter, workdir: PathLike, max_fps: float = DEFAULT_WEB_FPS,
                 max_seconds: float = DEFAULT_MAX_SECONDS):
        self.segmenter = segmenter
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.max_fps = max_fps
        self.max_seconds = max_seconds

    def segment(self, video: PathLike, threshold: float) -> Segmented:
        """Run the model on ``video`` with its own sound, the shifted sound and silence."""
        media = self.segmenter.open_video(video, allow_silent=True)
        if media.info.duration > self.max_seconds:
            raise MediaError(f"{Path(video).name} is {media.info.duration:.1f} s long; this demo takes clips of "
                             f"up to {self.max_seconds:g} s (avseg-web --max-seconds)")
        fps = choose_fps(media.info.fps, None, self.max_fps)
        inputs = audio_variants(media)
        predictions = {name: self.segmenter.predict_media(inputs[name], fps, threshold) for name in VARIANTS}
        return Segmented(inputs, predictions)

    def render(self, segmented: Segmented, threshold: float) -> Rendered:
        """Overlay videos (each with the sound its masks were made with), the strip and a summary at ``threshold``."""
        folder = Path(tempfile.mkdtemp(prefix="render-", dir=self.workdir))
        videos, coverage = {}, {}
        strip_images, strip_masks, strip_labels = [], [], []
        for name in VARIANTS:
            media = segmented.inputs[name]
            prediction = replace(segmented.predictions[name], threshold=threshold)
            videos[name] = folder / f"{name}.mp4"
            strip_at = set(strip_indices(len(prediction), STRIP_FRAMES)) if name == "normal" else set()
            with Mp4Writer(videos[name], prediction.fps, media.info.width, media.info.height,
                           **self._sound_of(media)) as writer:
                covered = []
                for index, frame in iter_frames_at(media.info, prediction.timestamps):
                    mask = prediction.mask(index)
                    covered.append(float(mask.mean()))
                    writer.write(overlay.overlay_mask(frame, mask))
                    if index in strip_at:
                        strip_images.append(frame)
                        strip_masks.append(mask)
                        strip_labels.append(f"{prediction.timestamps[index]:.2f} s")
            coverage[name] = float(np.mean(covered))
        strip = overlay.save_png(folder / "strip.png", overlay.frame_strip(strip_images, strip_masks, strip_labels))
        return Rendered(videos, strip, self._summary(segmented, coverage, threshold))

    @staticmethod
    def _sound_of(media: MediaInput) -> dict:
        """Mp4Writer audio arguments: the version's own 16 kHz sound, or none when it is silent."""
        if media.silent:
            return {}
        samples = int(math.ceil(media.info.duration * SAMPLE_RATE))
        return dict(waveform=media.waveform[:samples], sample_rate=SAMPLE_RATE)

    @staticmethod
    def _summary(segmented: Segmented, coverage: Dict[str, float], threshold: float) -> str:
        normal = segmented.predictions["normal"]
        info = segmented.inputs["normal"].info
        lines = [f"{info.width}x{info.height}, {info.duration:.2f} s; {len(normal)} frames at "
                 f"{float(normal.fps):.3g} fps in {len(normal.window_starts)} window(s) of {normal.clip_seconds} s; "
                 f"threshold {threshold:.2f}", "",
                 "| audio | mean mask coverage | mean change from its own sound |", "|---|---|---|"]
        if segmented.inputs["normal"].silent:
            lines.insert(1, "The upload has no audio track: every version is segmented with silence.")
        for name in VARIANTS:
            change = np.abs(segmented.predictions[name].probabilities - normal.probabilities).mean()
            lines.append(f"| {VARIANT_TITLES[name]} | {100 * coverage[name]:.1f} % | {change:.3f} |")
        return "\n".join(lines)


def build_app(ckpt: PathLike, device: Optional[str] = None, max_fps: float = DEFAULT_WEB_FPS,
              max_seconds: float = DEFAULT_MAX_SECONDS, workdir: Optional[PathLike] = None,
              runtime_model=None):
    """The Gradio page (``gradio.Blocks``) for the AVS checkpoint ``ckpt``; launch it with :func:`launch`.

    ``workdir`` holds the bundled clips and the outputs (default: a new temporary folder).
    ``runtime_model`` (e.g. an :class:`~avseg.inference.onnx_runtime.OnnxSegmentationModel`) replaces
    the checkpoint's torch model when given.
    """
    gr = require_gradio()
    if runtime_model is not None:
        segmenter = Segmenter(runtime_model, runtime_model.cfg, device=device)
    else:
        segmenter = Segmenter.from_checkpoint(ckpt, device=device)
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="avseg-web-"))
    demo = WebDemo(segmenter, workdir / "outputs", max_fps, max_seconds)
    examples = bundled_clips(workdir / "bundled")

    def show(rendered: Rendered) -> Tuple:
        return tuple(str(rendered.videos[name]) for name in VARIANTS) + (str(rendered.strip), rendered.summary)

    def run(video, threshold):
        if not video:
            raise gr.Error("Upload an mp4 (or pick a bundled clip) first.")
        try:
            segmented = demo.segment(video, threshold)
            return (segmented,) + show(demo.render(segmented, threshold))
        except AvsegError as error:
            raise gr.Error(str(error)) from None

    def redraw(segmented, threshold):
        if segmented is None:
            return (gr.skip(),) * (len(VARIANTS) + 2)
        return show(demo.render(segmented, threshold))

    with gr.Blocks(title="avseg: what sounds in this video?", analytics_enabled=False) as app:
        gr.Markdown(f"## What sounds in this video?\nModel: `{Path(ckpt).name}` ({segmenter.cfg.model.name}, "
                    f"{segmenter.image_size} px) on {segmenter.device}. Upload an mp4 with sound (up to "
                    f"{max_seconds:g} s) or pick a bundled synthetic clip, then press **Segment**. {SHUFFLE_RULE}")
        with gr.Row():
            source = gr.Video(label="input video", sources=["upload"], elem_id="input-video")
            with gr.Column():
                threshold = gr.Slider(0.0, 1.0, value=segmenter.threshold, step=0.05, label="mask threshold",
                                      elem_id="threshold")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                summary = gr.Markdown(elem_id="summary")
        gr.Examples(examples=[[str(path)] for path in examples], inputs=[source], label="bundled synthetic clips")
        with gr.Row():
            videos = [gr.Video(label=f"masks with {VARIANT_TITLES[name]}", elem_id=f"overlay-{name}",
                               interactive=False, loop=True) for name in VARIANTS]
        strip = gr.Image(label="frame strip (own sound)", type="filepath", interactive=False, elem_id="strip")
        state = gr.State()
        button.click(run, [source, threshold], [state, *videos, strip, summary])
        threshold.release(redraw, [state, threshold], [*videos, strip, summary])
    app.avseg_workdir = workdir
    return app


def require_gradio():
    """The ``gradio`` module with its analytics off, or :class:`ConfigError` saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise ConfigError("the browser demo needs gradio: pip install 'avseg[web]' (or pip install gradio)") from None
    return gradio


def launch(app, host: str = "127.0.0.1", port: Optional[int] = None, block: bool = True,
           allowed_paths: Sequence[PathLike] = ()):
    """Serve ``app`` on ``host:port`` without any outside request (no share link, no analytics, no web fonts,
    no server-side rendering). ``block=False`` returns once the server is up. Returns the local URL."""
    gr = require_gradio()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    _, url, _ = app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                           quiet=True, ssr_mode=False, mcp_server=False, enable_monitoring=False, theme=theme,
                           allowed_paths=[str(path) for path in (getattr(app, "avseg_workdir", None), *allowed_paths) if path])
    return url
