"""Files a visitor downloads (a GIF, a .safetensors of a trajectory, a zip of PNG frames): written once into one
private folder under names that hold no user input, and swept after EXPORT_KEEP_SECONDS.
"""

from __future__ import annotations

import functools
import io
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

from playground.explore import export_safetensors, trajectory_metadata, trajectory_tensors
from playground.sampling import Trajectory
from playground.viz import save_gif, trajectory_frames

EXPORT_KEEP_SECONDS = 600  # Gradio copies a returned file into its own cache at once; ours need not outlive that


@functools.lru_cache(maxsize=1)
def export_directory() -> Path:
    return Path(tempfile.mkdtemp(prefix="playground-exports-"))


def prune_exports(now=None):
    """Delete our exports (GIFs, .safetensors, PNG zips) older than EXPORT_KEEP_SECONDS, so a public server's disk does
    not fill with them."""
    now = time.time() if now is None else now
    for path in export_directory().glob("*"):
        try:
            if now - path.stat().st_mtime > EXPORT_KEEP_SECONDS:
                path.unlink()
        except FileNotFoundError:  # another request pruned it first
            pass


def _new_path(stem: str, suffix: str) -> Path:
    prune_exports()
    return export_directory() / f"{stem}-{uuid.uuid4().hex}{suffix}"  # the name holds no user input


def write_gif(trajectory: Trajectory, quantity: str, size: int) -> Path:
    """x̂0 ("x0") or x_t ("x_t") of every step as a looping GIF of grids about `size` px per row."""
    frames = trajectory_frames(trajectory, quantity, columns=min(4, trajectory.settings.batch), size=size)
    stride = max(1, len(frames) // 100)  # at most ~100 frames: a long DDPM run stays a small file
    frames = frames[::stride] + ([] if (len(frames) - 1) % stride == 0 else [frames[-1]])
    path = _new_path(f"trajectory-{quantity}", ".gif")
    save_gif(frames, path)
    return path


def write_tensors(trajectory: Trajectory, network: str) -> Path:
    """The whole trajectory (x_t, ε̂, x̂0 per step, timesteps) as .safetensors, with what made it as metadata."""
    path = _new_path(f"trajectory-{network}", ".safetensors")
    export_safetensors(trajectory_tensors(trajectory), path, trajectory_metadata(trajectory))
    return path


def write_frames(trajectory: Trajectory, network: str, size: int) -> Path:
    """x̂0 of every step as numbered PNG grids in one zip."""
    frames = trajectory_frames(trajectory, "x0", columns=min(4, trajectory.settings.batch), size=size)
    path = _new_path(f"frames-{network}", ".zip")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:  # PNG is compressed already
        for i, frame in enumerate(frames):
            buffer = io.BytesIO()
            frame.save(buffer, format="PNG")
            name = "final" if i == len(frames) - 1 else f"step-{i + 1:04d}-t{int(trajectory.timesteps[i]):03d}"
            archive.writestr(f"x0-{network}-{name}.png", buffer.getvalue())
    return path
