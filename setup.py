from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
# `cn-clip-pokemon export-hf` and reading the Hub's model.safetensors (tested with transformers 5.25)
HF = ["transformers>=5,<6", "safetensors>=0.4"]

setup(
    name="cn-clip-pokemon",
    version="0.1.0",
    description="Fine-tune Chinese-CLIP (cn_clip) on your own image-name pairs, "
    "on one GPU or the CPU, with Pokemon as the worked example.",
    long_description=(here / "README_En.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",  # torch 2.14 and torchvision 0.29 require it
    # patches/ and run_scripts/ live at the top of the repository (so `git apply patches/*.patch`
    # works in a Chinese-CLIP checkout and `bash run_scripts/NAME.sh` in a clone) and ship inside
    # the wheel as cn_clip_pokemon/patches and cn_clip_pokemon/run_scripts (`cn-clip-pokemon run-script`).
    # What the sdist carries besides: MANIFEST.in.
    packages=find_packages(include=["cn_clip_pokemon", "cn_clip_pokemon.*"])
    + ["cn_clip_pokemon.patches", "cn_clip_pokemon.run_scripts"],
    package_dir={"cn_clip_pokemon.patches": "patches", "cn_clip_pokemon.run_scripts": "run_scripts"},
    package_data={
        "cn_clip_pokemon": ["data/*", "model_configs/*.json"],
        "cn_clip_pokemon.patches": ["*.patch"],
        "cn_clip_pokemon.run_scripts": ["*.sh"],
    },
    install_requires=[
        "cn_clip==1.6.0",
        "torch>=1.13",  # torch.load(weights_only=True)
        "torchvision",
        "Pillow>=9.1",
        "opencc>=1.1.6",
        "lmdb",
        "pluggy>=1.0",
        "unidiff>=0.7",  # parses patches/ for the in-memory patch hook
        "tqdm",
        "matplotlib",  # the demo's training curve
        "opencv-python-headless",  # GrabCut: a busy background cut away for --framing subject (images.cut_out_subject)
    ],
    extras_require={
        # dream-world SVG art (fetch-sprites --dream-world); needs the system's libcairo2
        "svg": ["cairosvg>=2.7"],
        # `cn-clip-pokemon serve`, the web page (tested with Gradio 6.31)
        "web": ["gradio>=5"],
        "hf": HF,
        "test": [
            "pytest>=7",
            "build",  # tests/test_wheel_install.py builds the sdist and the wheel
            "cairosvg>=2.7",
            # the web page and its test, which drives Debian's chromium (never a downloaded browser)
            "gradio>=5",
            "selenium>=4.10",
            # upstream's ONNX export (patches/0022-0026) and its test: onnxscript is torch.onnx's exporter since torch 2.9
            "onnx>=1.14",
            "onnxruntime>=1.16",
            "onnxscript>=0.3",
        ]
        + HF,  # export-hf and its test: transformers' ChineseCLIPModel against cn_clip
    },
    entry_points={
        "console_scripts": ["cn-clip-pokemon = cn_clip_pokemon.cli:main"],
        "cn_clip.training": [
            "pokemon = cn_clip_pokemon.default_plugins.pokemon_dataset",
            "launchers = cn_clip_pokemon.default_plugins.launchers",
            "tiny_models = cn_clip_pokemon.default_plugins.model_configs",
        ],
    },
)
