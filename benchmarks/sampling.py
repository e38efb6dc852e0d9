"""Sampling: a 50-step DDIM trajectory of 16 samples with every step kept, vs the bare diffusers loop.

    python benchmarks/sampling.py [--threads 2]

Both run the flagship's weights (ours: PlaygroundUNet through playground.sample, keeping x_t, ε̂ and x̂0
at every step; peer: UNet2DModel in a plain DDIMScheduler loop keeping nothing), unconditional
(null label), interleaved in one process. Required: ours / bare <= 1.3.
"""

import argparse

import torch
from diffusers import DDIMScheduler

from common import ROOT, flagship_pair, interleaved


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from playground import SampleSettings, load_pipeline
    from playground.sampling import sample

    model = load_pipeline(ROOT / "weights" / "mnist")
    _, theirs = flagship_pair()
    theirs.to(memory_format=torch.channels_last)  # the layout ours holds: the ratio is the loop's, not the layout's
    settings = SampleSettings(sampler="ddim", steps=args.steps, seed=0, batch=args.batch, label=None)
    null = torch.full((args.batch,), model.null_label)

    @torch.inference_mode()
    def bare_loop():
        scheduler = DDIMScheduler.from_config(model.scheduler_config)
        scheduler.set_timesteps(args.steps)
        x = torch.randn((args.batch, 1, 28, 28), generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            x = scheduler.step(theirs(x, t, null).sample, t, x).prev_sample
        return x

    ours_final = sample(model, settings).final
    assert torch.allclose(ours_final, bare_loop(), atol=1e-3), "the two loops must compute the same samples"
    times = interleaved({"ours": lambda: sample(model, settings), "bare": bare_loop}, repeats=args.repeats, warmup=1)
    kept = sample(model, settings)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, DDIM {args.steps} steps, batch {args.batch}")
    print(f"ours (trajectory kept): {times['ours']:.3f} s   bare diffusers loop: {times['bare']:.3f} s   "
          f"ratio {times['ours'] / times['bare']:.3f}")
    print(f"trajectory holds {kept.nbytes() / 2**20:.2f} MiB: x_t {tuple(kept.x_t.shape)}, eps and x0 {tuple(kept.eps.shape)}")


if __name__ == "__main__":
    main()
