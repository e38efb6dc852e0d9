"""README.md runs as printed.

Blocks marked `<!-- test_readme: KIND -->` on the line before their fence are executed verbatim:
- `shell`: each command through bash, in a sandbox folder, with this interpreter's folder first on PATH (the venv
  activated, as the README asks); exit status 0, and every file a command names with `--out`, `--gif`, `--tensors`
  or `>` written and readable as its kind;
- `python`: exec'd in the sandbox folder; every `runs/...` path it names exists afterwards;
- `client`: the gradio_client snippet, exec'd against a live server with nothing changed but the server's address.

The sandbox's `weights/` mirrors the shipped folder: the same model names, configs and schedulers, every U-Net shrunk
to a sixteenth of its parameters at the same resolutions and attention sites (so every skip resolution, site,
lesson and variant the README names exists), and a tiny classifier. On the shipped weights the same runs take minutes
on 2 busy cores; these take seconds, and a weights file being rewritten cannot break them.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from playground import PlaygroundUNet
from playground.classifier import DigitClassifier
from playground.train import model_settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHIPPED = ROOT / "weights"
PRINTED_URL = "http://127.0.0.1:7860/"
MARKED = re.compile(r"^<!-- test_readme: (\w+) -->\n```\w*\n(.*?)^```", re.M | re.S)
FENCED = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
WRITES = re.compile(r"(?:--out|--gif|--tensors)\s+(\S+)|>\s*(\S+)")
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".gif": b"GIF8"}


def marked(kind: str) -> list[str]:
    found = [body for block_kind, body in MARKED.findall(README.read_text(encoding="utf-8")) if block_kind == kind]
    assert found, f"README.md has no block marked <!-- test_readme: {kind} -->"
    return found


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def shrunk(config: dict) -> dict:
    """A shipped U-Net's config at a sixteenth of its parameters: the same levels, blocks, attention and training ablation."""
    settings = model_settings(config)
    levels = len(settings["block_out_channels"])
    return settings | {"block_out_channels": [8 * (level + 1) for level in range(levels)], "norm_num_groups": 4,
                       "attention_head_dim": 8}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A working folder whose weights/ holds stand-ins for every shipped model, under the shipped names."""
    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    models = sorted(folder for folder in SHIPPED.iterdir() if (folder / "model_index.json").is_file())
    assert {"mnist", "mnist-noskip"} <= {folder.name for folder in models}  # the names the README's snippets use
    for folder in models:
        target = root / "weights" / folder.name
        config = json.loads((folder / "unet" / "config.json").read_text())
        PlaygroundUNet(**shrunk(config)).save_pretrained(target / "unet")
        shutil.copytree(folder / "scheduler", target / "scheduler")
        shutil.copy(folder / "model_index.json", target / "model_index.json")
    classifier = json.loads((SHIPPED / "classifier" / "config.json").read_text())
    DigitClassifier(channels=(4, 8), feature_dim=16, num_classes=classifier["num_classes"]).save_pretrained(
        root / "weights" / "classifier")
    return root


def test_the_stand_ins_have_the_shipped_models_parts(sandbox):
    for name in ("mnist", "mnist-noskip"):
        shipped = PlaygroundUNet.from_config(model_settings(json.loads((SHIPPED / name / "unet" / "config.json").read_text())))
        stand_in = PlaygroundUNet.from_pretrained(sandbox / "weights" / name, subfolder="unet")
        assert (stand_in.skip_resolutions, stand_in.attention_sites) == (shipped.skip_resolutions, shipped.attention_sites)
        assert stand_in.switchable_skip_resolutions == shipped.switchable_skip_resolutions
        assert stand_in.switchable_attention_sites == shipped.switchable_attention_sites
        assert sum(p.numel() for p in stand_in.parameters()) < sum(p.numel() for p in shipped.parameters()) / 10


def written_files(command: str) -> list[str]:
    return [out or redirect for out, redirect in WRITES.findall(command)]


def check_written(path: Path, command: str) -> None:
    assert path.is_file() and path.stat().st_size > 0, f"{command!r} did not write {path.name}"
    if path.suffix in MAGIC:
        assert path.read_bytes().startswith(MAGIC[path.suffix]), f"{path.name} is not a {path.suffix} file"
    elif path.suffix == ".json":
        assert isinstance(json.loads(path.read_text()), dict), f"{path.name} is not one JSON object"
    elif path.suffix == ".safetensors":
        assert load_file(path), f"{path.name} holds no tensors"


def test_the_shell_examples_run_as_printed(sandbox):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    for block in marked("shell"):
        for command in commands(block):
            result = subprocess.run(["bash", "-c", command], cwd=sandbox, env=env, capture_output=True, text=True,
                                    timeout=120)
            assert result.returncode == 0, f"{command!r} exited with {result.returncode}:\n{result.stderr[-2000:]}"
            outputs = written_files(command)
            assert outputs or not command.startswith("python"), f"{command!r} names no file it writes"
            for output in outputs:
                check_written(sandbox / output, command)


def test_the_python_examples_run_as_printed(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    for block in marked("python"):
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
        for path in re.findall(r"[\"'](runs/[^\"']+)[\"']", block):
            assert (sandbox / path).exists(), f"the README's example did not write {path}"


@pytest.fixture(scope="module")
def served(sandbox):
    from explainer import page

    # without the idle-time guesses, which change no result here and would hold a core of a shared machine
    demo = page.build_demo(sandbox / "weights", prefetch=False)
    _, url, _ = page.serve(demo, server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


def test_the_gradio_client_snippet_runs_as_printed_and_names_every_endpoint(served):
    from gradio_client import Client

    printed = "\n".join(marked("client"))
    assert printed.count(PRINTED_URL) == 1, f"the snippet should name the app's address {PRINTED_URL} once"
    exec(compile(printed.replace(PRINTED_URL, served), "README.md", "exec"), {"__name__": "readme"})
    endpoints = Client(served, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    readme = README.read_text(encoding="utf-8")
    assert [name for name in endpoints if f"`{name}`" not in readme and f'"{name}"' not in readme] == []


# ---- what the README promises besides its runnable blocks


def bash_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [command for kind, body in FENCED.findall(text) if kind == "bash" for command in commands(body)]


def test_no_example_writes_into_the_shipped_weights():
    for command in bash_commands():
        for part in command.split("&&"):
            words = shlex.split(part, comments=True)
            targets = [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("--out", "--out-root", ">")]
            assert not any(target.startswith("weights") for target in targets), f"{part!r} writes into weights/"
            if "playground.soup" in words:
                assert targets and words.count(targets[0]) == 1, f"{part!r} overwrites an ingredient"


def test_the_set_up_commands_start_from_a_fresh_venv_and_the_tests_are_run_as_ci_runs_them():
    text = README.read_text(encoding="utf-8")
    app_setup = next(c for c in bash_commands() if c.endswith("python app.py"))
    tests_setup = next(c for c in bash_commands() if "pytest" in c)
    for setup, requirements in ((app_setup, "requirements.txt"), (tests_setup, "requirements-dev.txt")):
        assert setup.startswith("python3 -m venv .venv && source .venv/bin/activate && "), setup
        assert f"pip install -r {requirements}" in setup, setup
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -r requirements-dev.txt" in ci
    assert tests_setup.endswith("python -m pytest -q") and ci.rstrip().endswith("/python -m pytest -q")
    pin = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    # the CPU build of the very torch requirements.txt pins, which pip then keeps
    assert f"pip install torch=={pin} --index-url https://download.pytorch.org/whl/cpu && pip install -r requirements.txt" in text


def test_the_space_card_and_screenshots():
    text = README.read_text(encoding="utf-8")
    front = text.split("---\n")[1]
    card = dict(line.split(": ", 1) for line in front.strip().splitlines())
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py"
    assert f"gradio=={card['sdk_version']}\n" in (ROOT / "requirements.txt").read_text()  # the Space runs the tested Gradio
    shots = re.findall(r"!\[([^\]]+)\]\((docs/screenshot-[^)]+\.png)\)", text)
    assert len(shots) >= 3 and all(len(alt) > 40 and (ROOT / path).is_file() for alt, path in shots)


def test_the_heldout_digits_the_readme_names_are_shipped():
    heldout = ROOT / "playground" / "assets" / "mnist-heldout" / "t10k-labels-idx1-ubyte.gz"
    assert "512 held-out MNIST test digits" in README.read_text(encoding="utf-8")
    assert int.from_bytes(gzip.decompress(heldout.read_bytes())[4:8], "big") == 512
