"""``tools/train.py --cfg avss.yaml`` (and the AVSS TPAVI paper config) train, validate and checkpoint on a
synthetic AVSBench-semantic release, with tiny overrides; the saved model evaluates with both metric variants."""
import json

import pytest
import torch

from avseg.checkpoint import read_checkpoint
from avseg.cli.eval import main as eval_main
from avseg.cli.train import main as train_main
from avseg.data.synthetic import make_synthetic

pytestmark = pytest.mark.slow  # two short trainings

TINY = ["data.image_size=64", "data.num_workers=0", "model.backbone.name=resnet18", "model.backbone.weights=null",
        "model.audio.name=small", "model.audio.weights=null", "model.audio.freeze=false",
        "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=2", "train.val_every=1",
        "train.progress=false", "train.tensorboard=false", "eval.batch_size=2"]


@pytest.fixture(scope="module")
def avss_root(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("avss"), "avss", size=64, seed=0, split_sizes=(2, 1, 1),
                          write_videos=False)


@pytest.mark.parametrize("cfg,neck", [("avss.yaml", 128), ("avsbench/avss_tpavi_r50.yaml", 16)])
def test_avss_config_trains_and_evaluates(avss_root, tmp_path, cfg, neck, one_torch_thread):
    run = tmp_path / "run"
    overrides = [f"data.root={avss_root}", f"model.neck_channels={neck}", *TINY]
    assert train_main(["--cfg", cfg, "--out", str(run), *overrides]) == 0
    payload = read_checkpoint(run / "last.pth")
    assert payload["config"]["model"]["num_classes"] == 71 and payload["config"]["data"]["task"] == "avss"
    history = (run / "log.txt").read_text()
    assert "val miou" in history and "miou_real_frames" in history

    assert eval_main(["--ckpt", str(run / "last.pth"), "--split", "test"]) == 0
    report = json.loads((run / "eval_test" / "metrics.json").read_text())["results"]["normal"]
    assert {"miou", "fscore", "miou_real_frames", "fscore_real_frames"} <= set(report["metrics"])
    assert (run / "eval_test" / "per_class.csv").is_file()
    assert all(torch.isfinite(torch.tensor(v)) for v in report["metrics"].values() if isinstance(v, float))
