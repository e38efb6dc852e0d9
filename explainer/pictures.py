"""The reverse process drawn at one step: x̂0, x_t and ε̂ of A, B and A − B.
"""

from __future__ import annotations

from explainer.checks import slider_step
from explainer.sessions import kept_run
from playground.viz import (
    image_grid,
    signed_grid,
    signed_range,
)

IMAGE_PX = 84  # display height of one 28-pixel sample


def _at(trajectory, step):
    """x̂0, x_t and ε̂ shown at slider position `step` (position S is the finished sample)."""
    last = len(trajectory)
    if step >= last:
        return trajectory.final, trajectory.final, trajectory.eps[last - 1], 0
    return trajectory.x0[step], trajectory.x_t[step], trajectory.eps[step], int(trajectory.timesteps[step])


def render_step(state, step):
    """Nine pictures (x̂0, x_t, ε̂ for A, B and |A−B|) and their caption. Never calls a model."""
    a, b = state["a"], state["b"]
    x0_a, xt_a, eps_a, t = _at(a, step)
    x0_b, xt_b, eps_b, _ = _at(b, step)
    columns = min(4, a.settings.batch)
    eps_range = max(signed_range(eps_a), signed_range(eps_b))
    diffs = [(x0_a - x0_b), (xt_a - xt_b), (eps_a - eps_b)]
    # one range per column: x̂0 differences at high t can be 100x those of ε̂ and would whiten the others
    diff_ranges = [max(signed_range(d), 1e-3) for d in diffs]
    pictures = [
        image_grid(x0_a, columns, IMAGE_PX), image_grid(xt_a, columns, IMAGE_PX), signed_grid(eps_a, eps_range, columns, IMAGE_PX),
        image_grid(x0_b, columns, IMAGE_PX), image_grid(xt_b, columns, IMAGE_PX), signed_grid(eps_b, eps_range, columns, IMAGE_PX),
        *(signed_grid(d, r, columns, IMAGE_PX) for d, r in zip(diffs, diff_ranges)),
    ]
    where = "the finished sample" if step >= len(a) else f"step {step + 1} of {len(a)}, timestep t = {t}"
    batch = a.settings.batch
    caption = (
        f"**{where}.** Each grid holds {'the one sample' if batch == 1 else f'the {batch} samples'}, (B, 1, 28, 28). "
        f"x̂0 and x_t in grey over [−1, 1]; ε̂ on a blue–white–red scale over ±{eps_range:.2f}; "
        f"A − B (last row), white = identical, over ±{diff_ranges[0]:.3g} (x̂0), ±{diff_ranges[1]:.3g} (x_t), ±{diff_ranges[2]:.3g} (ε̂). "
        f"Mean |x̂0_A − x̂0_B| = {(x0_a - x0_b).abs().mean():.4f}."
    )
    return (*pictures, caption)


def scrub(state, step):
    """Slider event: re-render the cached trajectories at another step (no model call)."""
    state = kept_run(state)
    return render_step(state, slider_step(step, state["a"]))
