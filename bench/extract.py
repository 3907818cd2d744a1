"""Extraction throughput: the Ray Data pipeline against a plain single-process PyTorch loop.

Both read the same face JPEGs with the same decode function, run the same model at the same
batch size, in one run; the ratio is pipeline / loop frames per second. The model is a
full-size architecture with random weights saved to a local weights folder, so the real
offline loading path is used and nothing is downloaded. With a GPU it also reports the
fraction of the bf16 FLOP roofline the pipeline reaches.

Each throughput is the median of ``--repeats`` timed runs (at least 3), with [min, max]; one
warm-up run of each is excluded. Every pipeline run writes to a fresh store (the pipeline
skips what a store already holds) in the same Ray instance.

    python bench/extract.py [--model resnet50] [--frames 768] [--batch-size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

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


def plain_loop(
    paths: list[str], model: str, weights: Path, batch_size: int, repeats: int
) -> list[float]:
    """Frames per second of ``repeats`` timed passes over every path, after one untimed one."""
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

    one_pass()  # warm-up, excluded
    return [one_pass() for _ in range(repeats)]


def pipeline_runs(corpus, config: ExtractionConfig, stores: Path, repeats: int) -> list[float]:
    """Frames per second of ``repeats`` end-to-end pipeline runs, each into a fresh store,
    after one untimed one. Ray must be initialised."""

    def one_run(i: int) -> float:
        report = extract_features(corpus, FeatureStore(stores / f"run{i}"), config)
        if not report.frames:
            raise RuntimeError("the pipeline extracted nothing (a store was not fresh?)")
        return report.frames / report.seconds

    one_run(0)  # warm-up, excluded
    return [one_run(i + 1) for i in range(repeats)]


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):8.1f} frames/s  [{min(xs):.1f}, {max(xs):.1f}]"


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

        loops = plain_loop(paths, args.model, tmp / "weights", args.batch_size, args.repeats)
        loop_fps = statistics.median(loops)

        init_ray(num_cpus=cpus)
        ray.data.DataContext.get_current().enable_progress_bars = False
        config = ExtractionConfig(
            extractors=(args.model,), weights_dir=tmp / "weights", batch_size=args.batch_size
        )
        rays = pipeline_runs(corpus, config, tmp / "stores", args.repeats)
        ray.shutdown()
        ray_fps = statistics.median(rays)

        device = (
            torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{cpus} threads"
        )
        print(
            f"model {args.model} (random init, full size), batch {args.batch_size}, "
            f"{len(paths)} face frames, {device}; median of {args.repeats} runs [min, max], "
            f"one warm-up run excluded"
        )
        print(f"  plain PyTorch loop : {spread(loops)}")
        print(
            f"  Ray Data pipeline  : {spread(rays)}  (end to end, actor start and store "
            f"writes included)"
        )
        print(f"  ratio ray/loop     : {ray_fps / loop_fps:8.2f}  (of the medians)")
        if torch.cuda.is_available():
            flops = flops_per_frame(args.model, tmp / "weights")
            name = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), math.nan)
            achieved = ray_fps * flops / 1e12  # at the median pipeline throughput
            print(
                f"  {flops / 1e9:.1f} GFLOP/frame -> {achieved:.1f} TFLOP/s = "
                f"{achieved / peak:.1%} of the {peak:.0f} TFLOP/s bf16 roofline"
            )


if __name__ == "__main__":
    main()
