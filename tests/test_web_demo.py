"""The browser demo: its three audio versions (own, shuffled, silent), and the page in headless Chromium."""
import ipaddress
import shutil
import socket
import time
from importlib.util import find_spec

import numpy as np
import pytest
import torch

from avseg.audio.io import load_audio
from avseg.config import load_config
from avseg.data.avsbench_dataset import normalize_frames
from avseg.evaluation.evaluator import silent_log_mel
from avseg.inference.segmenter import Segmenter
from avseg.inference.video import iter_frames, probe_video
from avseg.inference.web_app import VARIANTS, WebDemo, shifted_sound, write_synthetic_clip

from test_segmenter import ProbeModel, tiny_checkpoint  # noqa: F401  (a shared fixture)
from local_ports import free_port

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
BROWSER_MISSING = [name for name, found in [
    ("gradio", find_spec("gradio")), ("selenium", find_spec("selenium")),
    ("chromium (apt-get install chromium)", CHROMIUM), ("chromedriver (apt-get install chromium-driver)", CHROMEDRIVER),
] if not found]
# Chromium resolves no name but 127.0.0.1 and runs none of its own background services
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-default-apps", "--no-first-run",
                  "--disable-extensions", "--window-size=1280,1600"]


def test_shifted_sound_is_a_circular_half_shift():
    waveform = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(shifted_sound(waveform, 10 / 16000), [5, 6, 7, 8, 9, 0, 1, 2, 3, 4])
    padded = shifted_sound(np.ones(6, np.float32), 10 / 16000)  # short audio: silence-padded first
    np.testing.assert_array_equal(padded, [1, 0, 0, 0, 0, 1, 1, 1, 1, 1])


def test_three_audio_versions_and_their_videos(tmp_path, one_torch_thread):
    """ProbeModel: logits = red channel + mean log-mel, so each version's masks show the sound they were made with."""
    video = write_synthetic_clip(tmp_path / "clip.mp4", seed=3, size=64)
    segmenter = Segmenter(ProbeModel(), load_config(None, ["data.image_size=32"]), device="cpu")
    demo = WebDemo(segmenter, tmp_path / "out", max_fps=2)
    segmented = demo.segment(video, threshold=0.5)
    normal, shuffled, silent = (segmented.predictions[name] for name in VARIANTS)
    assert len(normal) == len(shuffled) == len(silent) == 10  # 5 s at 2 fps

    decoded = dict(iter_frames(segmented.inputs["normal"].info))
    info = segmented.inputs["normal"].info
    for index, time_s in enumerate(silent.timestamps):
        frame = decoded[int(np.searchsorted(info.frame_times, time_s + 1e-6) - 1)]
        red = normalize_frames(segmenter.resize(frame)[None])[0, 0]
        expected = torch.sigmoid(red + silent_log_mel(1).mean()).numpy()  # the evaluator's silence
        np.testing.assert_allclose(silent.probabilities[index], expected, atol=1e-5)
    assert np.abs(shuffled.probabilities - normal.probabilities).max() > 1e-3  # MS3 sources switch on and off

    rendered = demo.render(segmented, threshold=0.5)
    source = probe_video(video)
    for name in VARIANTS:
        written = probe_video(rendered.videos[name])
        assert abs(written.duration - source.duration) < 0.01 and (written.width, written.height) == (64, 64)
        assert (written.audio is None) == (name == "silent")
    own = segmented.inputs["normal"].waveform[:5 * 16000]
    played, _ = load_audio(rendered.videos["shuffled"])
    played = played[:len(own)]
    correlation = [abs(np.corrcoef(played, sound[:len(played)])[0, 1]) for sound in (shifted_sound(own, 5.0), own)]
    assert correlation[0] > 0.9 > correlation[1]  # the shuffled video plays the shifted sound
    assert rendered.strip.is_file()

    # the slider only redraws: no pixel reaches probability 1, every pixel exceeds 0
    assert demo.render(segmented, threshold=1.0).summary.count("| 0.0 % |") == 3
    assert demo.render(segmented, threshold=0.0).summary.count("| 100.0 % |") == 3


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False



def _video_state(driver, element_id):
    return driver.execute_script(
        "const v = document.querySelector(arguments[0]);"
        "return v ? {src: v.currentSrc, ready: v.readyState, duration: v.duration, error: v.error && v.error.code} : null;",
        f"#{element_id} video")


@pytest.mark.skipif(bool(BROWSER_MISSING), reason=f"browser test needs {', '.join(BROWSER_MISSING)}")
def test_the_page_in_a_real_browser(tmp_path, tiny_checkpoint, monkeypatch, one_torch_thread):  # noqa: F811
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from avseg.inference.web_app import build_app, launch

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager, were it ever asked, may not download
    attempts = []
    guarded_connect = socket.socket.connect

    def recording_connect(sock, address):
        attempts.append(address)
        return guarded_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", recording_connect)

    app = build_app(tiny_checkpoint, device="cpu", workdir=tmp_path / "web")
    url = launch(app, port=free_port(), block=False)
    upload = write_synthetic_clip(tmp_path / "upload.mp4", seed=11, size=64)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        deadline = time.monotonic() + 20
        while not driver.find_elements(By.CSS_SELECTOR, "#input-video input[type=file]"):
            assert time.monotonic() < deadline, "the page shows no upload field"
            time.sleep(0.2)
        driver.find_element(By.CSS_SELECTOR, "#input-video input[type=file]").send_keys(str(upload))
        while not (_video_state(driver, "input-video") or {}).get("ready"):
            assert time.monotonic() < deadline + 10, "the upload never showed up as a video"
            time.sleep(0.2)
        driver.find_element(By.CSS_SELECTOR, "#segment").click()
        deadline = time.monotonic() + 40
        states = {}
        while True:
            states = {name: _video_state(driver, f"overlay-{name}") for name in VARIANTS}
            if all(state and state["ready"] >= 1 for state in states.values()):
                break
            assert time.monotonic() < deadline, f"no playable result: {states}"
            time.sleep(0.3)
        expected = probe_video(upload).duration
        for name, state in states.items():
            assert state["error"] is None, f"{name}: the browser cannot play the video ({state})"
            assert abs(state["duration"] - expected) < 0.1, f"{name}: {state['duration']} s, the input is {expected} s"
        strip_size = driver.execute_script("const i = document.querySelector('#strip img'); return i && i.naturalWidth;")
        assert strip_size and strip_size > 0
        assert "5.00 s" in driver.find_element(By.CSS_SELECTOR, "#summary").text
        outside = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".filter(n => !/^(https?:\\/\\/127\\.0\\.0\\.1[:\\/]|data:|blob:)/.test(n));")
        assert outside == [], f"the page requested {outside}"
    finally:
        driver.quit()
        app.close()
    remote = [a for a in attempts if isinstance(a, tuple) and not _is_loopback(a[0])]
    assert remote == [], f"the server side tried to connect to {remote}"
