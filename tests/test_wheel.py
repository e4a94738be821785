"""avseg as a real package: the wheel carries the configs, installs outside the checkout, and its CLIs run.

The wheel is built from a copy of the sources (the checkout stays untouched) and installed with
``--no-deps --no-index`` into a fresh venv that sees this environment's third-party packages through a
``.pth`` line, so nothing is downloaded and the checkout's own ``avseg`` is not importable there.
"""
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "README.md", "LICENSE", "avseg", "configs")


def _run(args, cwd, env=None):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(bin folder, environment, working folder)`` of a fresh venv holding the built avseg wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (REPO / name).is_dir() else {}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], tmp, env)
    (wheel,) = (tmp / "dist").glob("avseg-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    (purelib,) = (venv / "lib").glob("python*/site-packages")
    (purelib / "avseg_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", str(wheel)], tmp, env)
    work = tmp / "elsewhere"
    work.mkdir()
    return venv / "bin", env, work


def test_installed_avseg_is_the_wheel_and_carries_every_config(installed):
    bin_dir, env, work = installed
    out = _run([str(bin_dir / "python"), "-c", "import avseg, avseg.config as c; print(avseg.__file__); print(c.CONFIG_DIR); "
                "print(len(list(c.CONFIG_DIR.rglob('*.yaml'))))"], work, env)
    module, config_dir, count = out.split()
    assert str(bin_dir.parent) in module and str(REPO) not in module
    assert Path(config_dir) == Path(module).parent / "configs"
    assert int(count) == len(list((REPO / "configs").rglob("*.yaml")))


def test_installed_cli_resolves_short_names_outside_the_repo(installed):
    bin_dir, env, work = installed
    out = _run([str(bin_dir / "avseg-train"), "--cfg", "ms3.yaml", "--print-config"], work, env)
    assert "name: ecmvae" in out and "task: ms3" in out
    assert "usage" in _run([str(bin_dir / "avseg-eval"), "--help"], work, env)


IMPORT_TO_DIST = {"cv2": "opencv-python-headless", "PIL": "Pillow", "yaml": "pyyaml", "skimage": "scikit-image"}


def test_every_third_party_import_is_declared():
    import ast
    import re

    setup_text = (REPO / "setup.py").read_text()
    declared = {m.lower() for m in re.findall(r'"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?[<>=!~]', setup_text)}
    modules = set()
    for path in (REPO / "avseg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m not in ("avseg", "__future__")}
    undeclared = sorted(m for m in third_party if IMPORT_TO_DIST.get(m, m).lower() not in declared)
    assert not undeclared, f"imported by avseg but not declared in setup.py: {undeclared}"
