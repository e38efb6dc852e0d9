"""Forward pass: PlaygroundUNet vs diffusers UNet2DModel on the flagship weights, same process, interleaved.

    python benchmarks/forward.py [--threads 2]

Prints seconds per forward and the ratios (ours / diffusers; capture / plain). Required: ratio <= 1.0,
capture <= 1.2x plain. Each network runs as it loads: ours holds its convolution weights channels-last
(PlaygroundUNet._use_channels_last), diffusers' in the standard layout. A second table compares like with like:
both channels-last, and ours in the standard layout ("CL / standard" is what the layout buys).
"""

import argparse
import copy

import torch

from common import flagship_pair, interleaved


def timed_forwards(batches, networks: dict, repeats: int):
    """(batch, {name: median seconds}) per batch; networks[name](x, t, y) must all compute the same output."""
    for batch in batches:
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        t = torch.full((batch,), 500)
        y = torch.arange(batch) % 11
        with torch.inference_mode():
            outputs = [forward(x, t, y).sample for forward in networks.values()]
            assert all(torch.allclose(output, outputs[0], atol=1e-4) for output in outputs)
            yield batch, interleaved({name: lambda forward=forward: forward(x, t, y) for name, forward in networks.items()},
                                     repeats=repeats)


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
    networks = {"ours": ours, "diffusers": theirs,
                "capture": lambda x, t, y: ours(x, t, y, capture_features=True)}
    for batch, times in timed_forwards((1, 16), networks, args.repeats):
        print(f"| {batch} | {times['ours'] * 1e3:.2f} | {times['diffusers'] * 1e3:.2f} | {times['ours'] / times['diffusers']:.3f} "
              f"| {times['capture'] * 1e3:.2f} | {times['capture'] / times['ours']:.3f} |")

    print("\nlike for like: both channels-last, and ours in the standard layout:")
    print("| batch | ours (ms) | diffusers CL (ms) | ours / diffusers CL | ours standard (ms) | ours / ours standard |")
    print("|---|---|---|---|---|---|")
    theirs_cl = copy.deepcopy(theirs).to(memory_format=torch.channels_last)
    ours_standard = copy.deepcopy(ours).to(memory_format=torch.contiguous_format)
    for batch, times in timed_forwards((1, 2, 16), {"ours": ours, "diffusers CL": theirs_cl, "ours standard": ours_standard},
                                       args.repeats):
        print(f"| {batch} | {times['ours'] * 1e3:.2f} | {times['diffusers CL'] * 1e3:.2f} | {times['ours'] / times['diffusers CL']:.3f} "
              f"| {times['ours standard'] * 1e3:.2f} | {times['ours'] / times['ours standard']:.3f} |")

if __name__ == "__main__":
    main()
