"""`sample(..., start=x_t, start_t=t)`: the reverse process begun at a given sample instead of seeded noise."""

from __future__ import annotations

import pytest
import torch

from playground import SampleSettings
from playground.sampling import initial_noise, sample


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_starting_from_the_seeded_noise_at_the_first_step_is_the_plain_run_to_the_bit(model, sampler):
    settings = SampleSettings(sampler=sampler, steps=4, seed=2, batch=2, label=(3, 5), guidance=2.0)
    plain, started = sample(model, settings), sample(model, settings, start=initial_noise(model, settings))
    for name in ("timesteps", "x_t", "eps", "x0"):
        assert torch.equal(getattr(plain, name), getattr(started, name)), name


def test_ddim_started_mid_way_from_a_runs_own_sample_continues_that_run_to_the_bit(model):
    settings = SampleSettings(sampler="ddim", steps=6, seed=1, batch=2, label=7, guidance=1.5)
    run = sample(model, settings)
    tail = sample(model, settings, start=run.x_t[2], start_t=int(run.timesteps[2]))
    assert tail.timesteps.tolist() == run.timesteps[2:].tolist() and tail.complete
    for name in ("x_t", "eps", "x0"):
        assert torch.equal(getattr(tail, name), getattr(run, name)[2:]), name


def test_stop_after_counts_from_the_start(model):
    settings = SampleSettings(steps=6, batch=1)
    run = sample(model, settings)
    part = sample(model, settings, start=run.x_t[3], start_t=int(run.timesteps[3]), stop_after=1)
    assert part.timesteps.tolist() == run.timesteps[3:5].tolist() and not part.complete


@pytest.mark.parametrize("kwargs, named", [
    (lambda run: {"start": run.x_t[0], "start_t": 123}, "start_t"),
    (lambda run: {"start_t": int(run.timesteps[1])}, "start_t"),
    (lambda run: {"start": run.x_t[0, :1]}, "start"),
    (lambda run: {"start": run.x_t[0] * float("nan")}, "start"),
    (lambda run: {"start": run.x_t[0], "reuse": run}, "reuse"),
])
def test_a_start_the_schedule_cannot_take_is_refused_by_name(model, kwargs, named):
    settings = SampleSettings(steps=3, batch=2)
    run = sample(model, settings)
    with pytest.raises(ValueError, match=rf"^{named}\b"):
        sample(model, settings, **kwargs(run))
