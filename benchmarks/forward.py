"""Forward pass: PlaygroundUNet vs diffusers UNet2DModel on the flagship weights, same process, interleaved.

    python benchmarks/forward.py [--threads 2]

Prints seconds per forward and the ratios (ours / diffusers; capture / plain). Required: ratio <= 1.0,
capture <= 1.2x plain. A second table runs both with channels-last weights, as the app loads ours
(playground.sampling.load_pipeline): that ratio compares like with like, and "CL / plain" is what the layout buys.
"""

import copy

import argparse

import torch

from common import flagship_pair, interleaved


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ours, theirs = flagship_pair()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| batch | ours (ms) | diffusers (ms) | ours / diffusers | capture (ms) | capture / ours |")
    print("|---|---|---|---|---|---|")
    for batch in (1, 16):
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        t = torch.full((batch,), 500)
        y = torch.arange(batch) % 11
        with torch.inference_mode():
            assert torch.allclose(ours(x, t, y).sample, theirs(x, t, y).sample, atol=1e-4)
            times = interleaved({
                "ours": lambda: ours(x, t, y),
                "diffusers": lambda: theirs(x, t, y),
                "capture": lambda: ours(x, t, y, capture_features=True),
            }, repeats=args.repeats)
        print(f"| {batch} | {times['ours'] * 1e3:.2f} | {times['diffusers'] * 1e3:.2f} | {times['ours'] / times['diffusers']:.3f} "
              f"| {times['capture'] * 1e3:.2f} | {times['capture'] / times['ours']:.3f} |")

    ours_cl, theirs_cl = (copy.deepcopy(net).to(memory_format=torch.channels_last) for net in (ours, theirs))
    print("\nchannels-last weights (as the app runs ours):")
    print("| batch | ours CL (ms) | diffusers CL (ms) | ours CL / diffusers CL | ours CL / ours plain |")
    print("|---|---|---|---|---|")
    for batch in (1, 2, 16):
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        t = torch.full((batch,), 500)
        y = torch.arange(batch) % 11
        with torch.inference_mode():
            assert torch.allclose(ours_cl(x, t, y).sample, ours(x, t, y).sample, atol=1e-4)
            times = interleaved({
                "ours": lambda: ours(x, t, y),
                "ours CL": lambda: ours_cl(x, t, y),
                "diffusers CL": lambda: theirs_cl(x, t, y),
            }, repeats=args.repeats)
        print(f"| {batch} | {times['ours CL'] * 1e3:.2f} | {times['diffusers CL'] * 1e3:.2f} "
              f"| {times['ours CL'] / times['diffusers CL']:.3f} | {times['ours CL'] / times['ours']:.3f} |")


if __name__ == "__main__":
    main()
