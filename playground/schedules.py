"""The samplers a run can use and how their timesteps are laid out: diffusers schedulers built from a model's
training schedule, so that every run of any step count starts where its pure-noise input belongs.
"""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

SAMPLERS = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
}
# How a run spreads its steps over the training timesteps, first choice first. "leading" (the DDIM paper's, and the
# training schedule's own) starts n steps at 1000 // n · (n − 1): 980 for 50 steps, every figure in the docs was
# measured so, but 599 for 600 steps, far below the pure noise a run starts from, and DPM-Solver's version puts all
# of 999 or 1000 steps at t = 0. A spacing counts only if its n timesteps are distinct and the first lies within
# START_TOLERANCE of the last training timestep. "linspace" passes at every count but two (one DDPM or DDIM step
# lands on t = 0; DPM-Solver repeats timesteps at 1000 steps), where "trailing" passes.
SPACINGS = ("leading", "linspace", "trailing")
START_TOLERANCE = 0.02  # of the training timesteps: 20 of 1000, one stride of a 50-step run


def make_scheduler(model, sampler: str, steps: int):
    """The sampler, its timesteps set: `steps` distinct ones, descending from (near) the last training timestep.

    model: a `DiffusionModel` (its `scheduler_config`, the noise schedule it was trained with, is what is read).
    """
    scheduler_class, overrides = SAMPLERS[sampler]
    for spacing in SPACINGS:
        scheduler = scheduler_class.from_config(model.scheduler_config, **overrides, timestep_spacing=spacing)
        last = scheduler.config.num_train_timesteps - 1
        if steps > last + 1:
            raise ValueError(f"steps must be at most the {last + 1} training timesteps, got {steps}")
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps.tolist()
        starts_at_noise = timesteps[0] >= last - START_TOLERANCE * (last + 1)
        if len(timesteps) == steps and starts_at_noise and all(b < a for a, b in zip(timesteps, timesteps[1:])):
            return scheduler
    raise ValueError(f"steps: {sampler} cannot spread {steps} steps over the model's schedule")
