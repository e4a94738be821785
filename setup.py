import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "avseg" / "version.py").read_text(), version)

setup(
    name="avseg",
    version=version["__version__"],
    description="Audio-visual segmentation toolkit: ECMVAE, the AVSBench TPAVI baseline, exact AVSBench metrics, VAE baselines",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # The repo's top-level configs/ ships inside the package as avseg/configs, so short names such as
    # `--cfg ms3.yaml` resolve in an installed avseg too (avseg.config.CONFIG_DIR).
    packages=find_packages(include=["avseg", "avseg.*"]) + ["avseg.configs"],
    package_dir={"avseg.configs": "configs"},
    package_data={"avseg.configs": ["*.yaml", "**/*.yaml"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "timm>=1.0",
        "opencv-python-headless>=4.8",
        "librosa>=0.10",
        "soundfile>=0.12",
        "av>=12",
        "einops>=0.7",
        "pycocotools>=2.0.7",
        "omegaconf>=2.3",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "matplotlib>=3.7",
        "numpy>=1.24",
        "Pillow>=9",
        "soxr>=0.3",
        "safetensors>=0.4",
    ],
    extras_require={
        "dev": ["pytest>=7", "scikit-learn>=1.3", "scikit-image>=0.21"],
        "faces": ["scikit-image>=0.21"],
        "web": ["gradio>=4"],
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
        "resampy": ["resampy>=0.4"],
    },
    # The fused AVSS arg-max + confusion kernel (avseg/evaluation/_class_confusion.c). Optional: without a C
    # compiler the install goes on and AVSSMetric takes its pure-torch path (same numbers, slower).
    ext_modules=[
        Extension(
            "avseg.evaluation._class_confusion",
            ["avseg/evaluation/_class_confusion.c"],
            extra_compile_args=[] if sys.platform == "win32" else ["-O3"],
            optional=True,
        )
    ],
    entry_points={
        "console_scripts": [
            "avseg-train=avseg.cli.train:entry",
            "avseg-eval=avseg.cli.eval:entry",
            "avseg-demo=avseg.cli.demo:entry",
            "avseg-web=avseg.cli.web:entry",
            "avseg-export=avseg.cli.export:entry",
            "avseg-stream=avseg.cli.stream:entry",
        ]
    },
)
