"""Extraction throughput: the Ray Data pipeline against a plain single-process PyTorch loop.

Both read the same face JPEGs with the same decode function, run the same model at the same
batch size, in one run; the ratio is pipeline / loop frames per second. The model is a
full-size architecture with random weights saved to a local weights folder, so the real
offline loading path is used and nothing is downloaded. With a GPU it also reports the
fraction of the bf16 FLOP roofline the pipeline reaches.

The two run interleaved (loop, pipeline, loop, pipeline ...) so that load shifts both; each
throughput is the median of ``--repeats`` (at least 3) such pairs, with [min, max], and the
ratio is the median of the pairs' ratios. One warm-up run of each is excluded. Every pipeline
run writes to a fresh store in the same Ray instance.

    python bench/extract.py [--model resnet50] [--frames 768] [--batch-size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from pairs import interleaved, pair_ratios, spread

from abaw_ray.affwild2 import FACE_SIZE
from abaw_ray.data import load_corpus
from abaw_ray.data.synthetic import generate
from abaw_ray.features import create_extractor
from abaw_ray.features.pipeline import ExtractionConfig, decode_faces, extract_features
from abaw_ray.features.store import FeatureStore
from abaw_ray.runtime import init_ray

# ViT-L/14 vision tower (openai/clip-vit-large-patch14), as data: no config download needed.
CLIP_LARGE = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=768,
)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def save_random_weights(model: str, folder: Path) -> None:
    """A randomly initialised full-size model where the offline loader looks for weights."""
    if model == "clip_large":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_LARGE)).save_pretrained(
            folder / model
        )
        return
    import timm
    from safetensors.torch import save_file

    from abaw_ray.features import get_spec

    net = timm.create_model(get_spec(model).source.split(".")[0], pretrained=False)
    (folder / model).mkdir(parents=True)
    save_file(net.state_dict(), folder / model / "model.safetensors")


def plain_loop(paths: list[str], model: str, weights: Path, batch_size: int):
    """A pass of a single-process PyTorch loop over every path: returns its frames per second."""
    extractor = create_extractor(model, weights_dir=weights)
    extractor.to("cuda" if torch.cuda.is_available() else "cpu")

    def one_pass() -> float:
        start = time.perf_counter()
        for i in range(0, len(paths), batch_size):
            batch = decode_faces({"path": np.array(paths[i : i + batch_size])})
            extractor(batch["image"])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return len(paths) / (time.perf_counter() - start)

    return one_pass


def pipeline_run(corpus, config: ExtractionConfig, stores: Path):
    """An end-to-end pipeline run into a fresh store (the pipeline skips what a store already
    holds): returns its frames per second. Ray must be initialised."""
    runs = itertools.count()

    def one_run() -> float:
        report = extract_features(corpus, FeatureStore(stores / f"run{next(runs)}"), config)
        if not report.frames:
            raise RuntimeError("the pipeline extracted nothing (a store was not fresh?)")
        return report.frames / report.seconds

    return one_run


def flops_per_frame(model: str, weights: Path) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    extractor = create_extractor(model, weights_dir=weights)
    x = extractor.preprocess(np.zeros((1, FACE_SIZE, FACE_SIZE, 3), np.uint8))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        extractor.forward(x)
    return float(counter.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet50")
    p.add_argument("--frames", type=int, default=768)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (at least 3)")
    args = p.parse_args()
    if args.repeats < 3:
        p.error("--repeats must be at least 3 (the figure printed is a median)")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seconds = args.frames / 25 / 6 + 1
        generate(tmp / "corpus", videos=6, seed=0, seconds=(seconds, seconds * 1.05))
        corpus = load_corpus(tmp / "corpus")
        paths = [
            str(v.face_path(int(k)))
            for v in corpus.videos.values()
            for k in v.face_frames
            if k <= corpus.num_frames(v.name)
        ]
        save_random_weights(args.model, tmp / "weights")
        cpus = args.num_cpus or torch.get_num_threads()
        torch.set_num_threads(cpus)

        init_ray(num_cpus=cpus)
        ray.data.DataContext.get_current().enable_progress_bars = False
        config = ExtractionConfig(
            extractors=(args.model,), weights_dir=tmp / "weights", batch_size=args.batch_size
        )
        try:
            loops, rays = interleaved(
                plain_loop(paths, args.model, tmp / "weights", args.batch_size),
                pipeline_run(corpus, config, tmp / "stores"),
                args.repeats,
            )
        finally:
            ray.shutdown()

        device = (
            torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{cpus} threads"
        )
        print(
            f"model {args.model} (random init, full size), batch {args.batch_size}, "
            f"{len(paths)} face frames, {device}; median [min, max] of {args.repeats} interleaved "
            f"pairs, one warm-up run of each excluded"
        )
        print(f"  plain PyTorch loop : {spread(loops)} frames/s")
        print(
            f"  Ray Data pipeline  : {spread(rays)} frames/s  (end to end, actor start and "
            f"store writes included)"
        )
        print(f"  ratio ray/loop     : {spread(pair_ratios(rays, loops), '.2f')}  (of the pairs)")
        if torch.cuda.is_available():
            flops = flops_per_frame(args.model, tmp / "weights")
            name = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), math.nan)
            achieved = statistics.median(rays) * flops / 1e12  # at the median pipeline throughput
            print(
                f"  {flops / 1e9:.1f} GFLOP/frame -> {achieved:.1f} TFLOP/s = "
                f"{achieved / peak:.1%} of the {peak:.0f} TFLOP/s bf16 roofline"
            )


if __name__ == "__main__":
    main()
