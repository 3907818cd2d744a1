"""The corpus check: what a user sees before spending GPU hours on a corpus.

Counts videos and frames per task and split, invalid-label frames, missing face frames, label
files whose length differs from the video's, and videos without audio.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from abaw_ray.affwild2 import SPLITS
from abaw_ray.data.corpus import Corpus
from abaw_ray.tasks import TASKS


def summarize(corpus: Corpus) -> dict[str, Any]:
    splits: dict[str, dict[str, dict[str, int]]] = {}
    for task in TASKS:
        splits[task] = {}
        for split in SPLITS:
            members = corpus.split_videos(task, split)
            if not members:
                continue
            row = {"videos": len(members), "frames": 0, "missing_face_frames": 0}
            if split != "test":
                row.update(label_lines=0, valid_frames=0, invalid_frames=0)
            for v in members:
                n = corpus.num_frames(v)
                row["frames"] += n
                row["missing_face_frames"] += int((~corpus.videos[v].face_mask(n)).sum())
                if split != "test":
                    lab = corpus.labels[task][v]
                    row["label_lines"] += lab.num_frames
                    row["valid_frames"] += int(lab.valid.sum())
                    row["invalid_frames"] += int((~lab.valid).sum())
            splits[task][split] = row

    mismatches = []
    for name, video in sorted(corpus.videos.items()):
        if name in corpus.unusable or video.media is None or not video.media.num_frames:
            continue
        timeline = corpus.num_frames(name)
        delta = timeline - video.media.num_frames
        if delta:
            mismatches.append(
                {
                    "video": name,
                    "timeline_frames": timeline,
                    "video_frames": video.media.num_frames,
                    # Longer labels: the extra frames get the nearest frame's features.
                    # Shorter labels: the video's extra frames are ignored.
                    "action": f"padded {delta}" if delta > 0 else f"cut {-delta}",
                }
            )

    no_audio = {}
    for name, video in sorted(corpus.videos.items()):
        if name in corpus.unusable:
            continue
        if video.media is None:
            no_audio[name] = "no raw video found"
        elif video.media.error:
            no_audio[name] = f"unreadable: {video.media.error}"
        elif not video.media.has_audio:
            no_audio[name] = f"{video.media.path.name} has no audio stream"

    fps = sorted({round(v.fps, 3) for v in corpus.videos.values() if v.fps})
    return {
        "root": str(corpus.root),
        "videos": len(corpus.videos) - len(corpus.unusable),
        "frame_rates": fps,
        "splits": splits,
        "length_mismatches": mismatches,
        "videos_without_audio": no_audio,
        "templates": {
            t: {"path": str(tm.path), "lines": len(tm), "videos": len(tm.videos)}
            for t, tm in corpus.templates.items()
        },
        "test_lists": {t: str(p) for t, p in corpus.test_list_files.items()},
        "unusable_videos": dict(corpus.unusable),
        "missing_face_share": _missing_share(splits),
    }


def _missing_share(splits: dict[str, dict[str, dict[str, int]]]) -> float:
    frames = sum(r["frames"] for t in splits.values() for r in t.values())
    missing = sum(r["missing_face_frames"] for t in splits.values() for r in t.values())
    return float(np.round(missing / frames, 4)) if frames else 0.0


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"Aff-Wild2 corpus at {summary['root']}",
        f"  videos: {summary['videos']}   frame rates: {summary['frame_rates']}",
    ]
    header = (
        f"  {'task':<5} {'split':<6} {'videos':>6} {'frames':>8} {'valid':>8} "
        f"{'invalid':>8} {'no face':>8}"
    )
    lines.append(header)
    for task, rows in summary["splits"].items():
        for split, r in rows.items():
            lines.append(
                f"  {task:<5} {split:<6} {r['videos']:>6} {r['frames']:>8} "
                f"{r.get('valid_frames', '-'):>8} {r.get('invalid_frames', '-'):>8} "
                f"{r['missing_face_frames']:>8}"
            )
    for task, t in summary["templates"].items():
        lines.append(f"  {task} template: {t['lines']} lines, {t['videos']} videos ({t['path']})")
    mm = summary["length_mismatches"]
    lines.append(f"  label/video length mismatches: {len(mm)}")
    for m in mm:
        lines.append(
            f"    {m['video']}: timeline {m['timeline_frames']} vs video {m['video_frames']}"
            f" frames -> {m['action']}"
        )
    na = summary["videos_without_audio"]
    lines.append(f"  videos without audio: {len(na)}")
    for name, why in na.items():
        lines.append(f"    {name}: {why}")
    if summary["unusable_videos"]:
        lines.append(f"  left out (no faces, no raw video): {len(summary['unusable_videos'])}")
        for name in summary["unusable_videos"]:
            lines.append(f"    {name}")
    return "\n".join(lines)
