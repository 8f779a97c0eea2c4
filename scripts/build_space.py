#!/usr/bin/env python
"""Write a ready Hugging Face Space (Gradio SDK) for the tie-lite chat into OUTDIR.

    python scripts/build_space.py OUTDIR          # then: cd OUTDIR && python app.py   (or push it to a Space)

OUTDIR gets app.py, requirements.txt, README.md with the Spaces front matter, a copy of
the `tie_lite` package and the shipped models (from models/, or $TIE_LITE_MODELS). The Space runs
the shipped ensemble on the CPU and installs only what CPU hardware uses; `--hardware gpu` builds a Space for
GPU hardware (CUDA torch, bitsandbytes, accelerate; TIE_LITE_DEVICE=cuda). Where the
`spaces` package imports (it does on Spaces), the generation handlers are wrapped in `spaces.GPU`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL_FILES_SKIPPED = ("*.log", "__pycache__", "*.pyc", "*.tmp", "checkpoint-*")

APP = '''"""tie-lite on Hugging Face Spaces: the chat of `tie-lite chat` on the shipped ensemble (built by
scripts/build_space.py). Space variables: TIE_LITE_DEVICE (cpu | cuda | auto, default cpu)."""

import os
import sys

from tie_lite.faces.options import quiet_libraries
from tie_lite.runtime.registry import DEFAULT_ENSEMBLE, models_dir
from tie_lite.runtime.session import Ensemble, LoadSettings
from tie_lite.faces.chat.app import Defaults, build_app, launch_app

try:  # present on Spaces: on ZeroGPU hardware the generation handlers get the GPU while they run
    import spaces

    gpu = spaces.GPU
except ImportError:
    gpu = None

quiet_libraries()
device = os.environ.get("TIE_LITE_DEVICE", "cpu")
print(f"tie-lite Space: loading {', '.join(DEFAULT_ENSEMBLE)} from {models_dir()} on {device}"
      f"{' (spaces.GPU)' if gpu else ''}", file=sys.stderr, flush=True)
load = LoadSettings(models=DEFAULT_ENSEMBLE, device=device)
ensemble = Ensemble(load)
# A public demo runs the shipped members only: visitors cannot make it fetch or load other models.
demo = build_app(ensemble, Defaults(load=load), gpu=gpu,
                 title="tie-lite: TIE ensemble of diffusion LMs")

if __name__ == "__main__":
    launch_app(demo, host=None)  # None: $GRADIO_SERVER_NAME, which Spaces sets
'''

README = """---
title: tie-lite
emoji: 🧮
colorFrom: indigo
colorTo: gray
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
python_version: "{python_version}"
suggested_hardware: {suggested_hardware}
pinned: false
short_description: Two diffusion LMs decode together with TIE, step by step
---

# tie-lite

Two small masked diffusion language models ({members}) answer arithmetic questions *together* with
TIE (Trajectory-based Iterative Ensembling): each member denoises its own canvas, and every round the
trajectory that scores best is relayed to every member. The chat shows the canvas filling in (░ =
still masked), which member leads each round and the members' scores.

Try: `What is (23+41)*7?` or `What is 23*4+17*5?`

{hardware_note} Use it from code:

```python
from gradio_client import Client
client = Client("<owner>/<space>")
print(client.predict("What is (23+41)*7?", api_name="/chat"))
```

Built with `python scripts/build_space.py OUTDIR` from the tie-lite repository.
"""


# The Space installs the CPU build of torch from PyTorch's own index: PyPI's Linux torch wheel is the CUDA
# build, several GB that a CPU Space cannot use.
TORCH_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
# What the Space's app imports on each kind of hardware (no eval, server, Ray or plotting extras): a CPU Space
# never quantizes or offloads, so bitsandbytes and accelerate (and their CUDA wheels) stay out.
SPACE_DEPENDENCIES = {
    "cpu": ("torch", "transformers", "tokenizers", "safetensors", "tqdm", "matplotlib", "psutil"),
    "gpu": ("torch", "transformers", "tokenizers", "safetensors", "tqdm", "matplotlib", "psutil", "accelerate",
            "bitsandbytes"),
}
HARDWARE_NOTES = {
    "cpu": ("Runs on the CPU (this build installs only what CPU hardware uses). For GPU hardware, rebuild it with "
            "`python scripts/build_space.py OUTDIR --hardware gpu` (CUDA torch, bitsandbytes, accelerate), push "
            "that, pick a GPU in the Space's settings and set the Space variable `TIE_LITE_DEVICE=cuda`."),
    "gpu": ("Built for GPU hardware (CUDA torch, bitsandbytes, accelerate): pick a GPU in the Space's settings and "
            "set the Space variable `TIE_LITE_DEVICE=cuda`. For CPU hardware rebuild it without `--hardware gpu`."),
}


def requirements(hardware: str = "cpu") -> list[str]:
    """What the Space's hardware uses, pinned to the versions installed here (the versions the tests ran with)."""
    from importlib.metadata import version

    keep = [TORCH_INDEX] if hardware == "cpu" else []
    for name in SPACE_DEPENDENCIES[hardware]:
        pinned = version(name).split("+")[0]
        keep.append(f"{name}=={pinned}+cpu" if name == "torch" and hardware == "cpu" else f"{name}=={pinned}")
    return keep


def copy_package(name: str, out: Path) -> None:
    shutil.copytree(ROOT / name, out / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))


def copy_models(out: Path) -> list[str]:
    from tie_lite.runtime.registry import DEFAULT_ENSEMBLE, ENTRIES, models_dir

    src_root = models_dir()
    copied = []
    for name in DEFAULT_ENSEMBLE:
        entry = ENTRIES[name]
        src = src_root / entry.source
        if not (src / "config.json").exists():
            raise SystemExit(f"build_space: the shipped model '{name}' is missing at {src}; train it first "
                             f"(scripts/train_tiny.py) or point $TIE_LITE_MODELS at its folder")
        shutil.copytree(src, out / "models" / entry.source, ignore=shutil.ignore_patterns(*MODEL_FILES_SKIPPED))
        copied.append(name)
    for card in ("README.md", "LICENSE"):  # the models' own card, if the folder has one
        if (src_root / card).is_file():
            shutil.copy2(src_root / card, out / "models" / card)
    return copied


def build(out: Path, force: bool = False, hardware: str = "cpu") -> Path:
    import gradio

    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        if not force:
            raise SystemExit(f"build_space: {out} is not empty; pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for pkg in ("tie_lite",):
        copy_package(pkg, out)
    members = copy_models(out)
    if (ROOT / "LICENSE").is_file():
        shutil.copy2(ROOT / "LICENSE", out / "LICENSE")
    (out / "app.py").write_text(APP)
    (out / "requirements.txt").write_text("\n".join(requirements(hardware)) + "\n")
    (out / "README.md").write_text(README.format(
        gradio_version=gradio.__version__,
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        members=" and ".join(f"`{m}`" for m in members),
        suggested_hardware="cpu-basic" if hardware == "cpu" else "t4-small",
        hardware_note=HARDWARE_NOTES[hardware],
    ))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--force", action="store_true", help="replace OUTDIR if it is not empty")
    ap.add_argument("--hardware", choices=tuple(SPACE_DEPENDENCIES), default="cpu",
                    help="what the Space runs on: cpu (default; CPU torch, no quantization libraries) or gpu")
    args = ap.parse_args(argv)
    out = build(args.outdir, args.force, args.hardware)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote the Space to {out} ({size / 2**20:.1f} MiB); try it: cd {out} && python app.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
