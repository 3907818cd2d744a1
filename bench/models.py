"""Forward + backward time per batch of every fusion model, and of MFN against its plain
per-frame reference implementation (same weights), in one run.

    python bench/models.py [--batch 32] [--frames 256] [--hidden 256] [--repeats 3] [--threads 2]

Each time is the median of ``--repeats`` (at least 3) timed steps after one warm-up step. MFN
and its reference run interleaved (fast, reference, fast, reference ...) so that load shifts
both; its speed-up is the median [min, max] of the pairs' ratios.

Inputs: three modalities of 768 / 1024 / 768 dims (CLIP-large, WavLM-large, a third).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from pairs import interleaved, pair_ratios, spread

from abaw_ray.models import create_model, list_models
from abaw_ray.models.mfn import mfn_reference_forward

DIMS = [768, 1024, 768]


def one_step(fn, params, device: torch.device):
    """A timed forward + backward step: returns its seconds."""

    def once() -> float:
        for p in params:
            p.grad = None
        start = time.perf_counter()
        fn().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return once


def time_step(fn, params, repeats: int, device: torch.device) -> float:
    """Median seconds of one forward + backward step over ``repeats`` timed steps."""
    once = one_step(fn, params, device)
    once()  # warm-up, excluded
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="timed steps (at least 3)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    args = p.parse_args()
    if args.repeats < 3:
        p.error("--repeats must be at least 3 (the figure printed is a median)")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    xs = [torch.randn(args.batch, args.frames, d, device=device) for d in DIMS]
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"forward+backward per batch: B={args.batch}, T={args.frames}, hidden={args.hidden}, "
        f"inputs {'/'.join(map(str, DIMS))}, {where}; median of {args.repeats} steps"
    )
    for gates in ("paper", "reference"):
        model = create_model("mfn", DIMS, "va", hidden=args.hidden, gates=gates).to(device)
        params = list(model.parameters())
        fast, ref = interleaved(
            one_step(lambda m=model: m(xs)["pred"].pow(2).mean(), params, device),
            one_step(
                lambda m=model: mfn_reference_forward(m.core, xs).pow(2).mean(), params, device
            ),
            args.repeats,
        )
        print(
            f"  mfn (gates={gates:<9}): {statistics.median(fast):7.3f} s   per-frame reference: "
            f"{statistics.median(ref):7.3f} s   speed-up {spread(pair_ratios(ref, fast), '.2f')}x"
        )
    for name in list_models():
        if name == "mfn":
            continue
        model = create_model(name, DIMS, "va", hidden=args.hidden).to(device).train()
        t = time_step(
            lambda m=model: (lambda o: o["pred"].pow(2).mean() + o["aux_loss"])(m(xs)),
            list(model.parameters()),
            args.repeats,
            device,
        )
        print(f"  {name:<24}: {t:7.3f} s")


if __name__ == "__main__":
    main()
