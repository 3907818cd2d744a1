"""The Aff-Wild2 corpus as distributed for ABAW 5/6/8, read into typed, validated objects.

Owns discovery of the layout (annotation folders of any edition, raw videos anywhere below
the root, ``cropped_aligned*`` face folders, test lists, submission templates) and the
validation of everything read; the names it looks for are ``abaw_ray.affwild2``'s. Malformed
input raises :class:`InputFormatError` naming the file and line; normal gaps (missing faces,
label files a line off) are left for ``check`` to count.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from abaw_ray.affwild2 import (
    ANNOTATIONS_PATTERN,
    CHALLENGE_DIRS,
    FACE_DIR,
    FACE_DIR_PATTERN,
    FRAME_NAME,
    FRAME_NAME_WIDTH,
    INVALID_LABEL,
    LABEL_HEADERS,
    SPLIT_DIRS,
    SPLIT_OF_DIR,
    TEMPLATE_DIR,
    TEMPLATE_FIRST_COLUMN,
    Split,
    face_image_name,
    pair_names,
    raw_video,
)
from abaw_ray.data.labels import FrameLabels, read_labels
from abaw_ray.data.media import VIDEO_SUFFIXES, MediaInfo, probe_media
from abaw_ray.errors import CorpusNotFoundError, InputFormatError
from abaw_ray.tasks import KIND, NUM_EXPR_CLASSES, TASKS, Task

_EDITION = re.compile(r"(\d+)(?:st|nd|rd|th)", re.IGNORECASE)


def face_image_path(face_dir: str | Path, width: int, frame: int) -> Path:
    """Frame ``frame``'s cropped face: ``<face_dir>/<frame, zero-padded to width>.jpg``."""
    return Path(face_dir) / face_image_name(frame, width)


@dataclass(frozen=True, eq=False)
class Video:
    """One Aff-Wild2 video (one person): its faces and the raw file that carries its audio."""

    name: str
    face_dir: Path | None
    face_frames: np.ndarray  # sorted 1-based indices of the frames that have a face image
    face_name_width: int
    media: MediaInfo | None  # the raw video (shared by a _left/_right pair); None if not found

    @property
    def fps(self) -> float | None:
        return self.media.fps if self.media else None

    @property
    def has_audio(self) -> bool:
        return bool(self.media and self.media.has_audio)

    @property
    def audio_source(self) -> Path | None:
        return self.media.path if self.media else None

    def face_path(self, frame: int) -> Path:
        if self.face_dir is None:
            raise FileNotFoundError(f"video {self.name} has no {FACE_DIR} folder")
        return face_image_path(self.face_dir, self.face_name_width, frame)

    def face_mask(self, num_frames: int) -> np.ndarray:
        """bool [num_frames]: whether frame k+1 has a face image."""
        mask = np.zeros(num_frames, dtype=bool)
        inside = self.face_frames[(self.face_frames >= 1) & (self.face_frames <= num_frames)]
        mask[inside - 1] = True
        return mask


@dataclass(frozen=True, eq=False)
class SubmissionTemplate:
    """An official test-set template: one line per test frame, in the order to be submitted."""

    task: Task
    path: Path
    header: str
    image_locations: tuple[str, ...]
    video_of_line: tuple[str, ...]
    frame_of_line: np.ndarray  # 1-based frame index of each line

    @property
    def videos(self) -> tuple[str, ...]:
        return tuple(self.lines_by_video)

    @cached_property
    def lines_by_video(self) -> dict[str, np.ndarray]:
        """0-based template line numbers of each video, videos in order of appearance."""
        groups: dict[str, list[int]] = {}
        for i, v in enumerate(self.video_of_line):
            groups.setdefault(v, []).append(i)
        return {v: np.array(ix, dtype=np.int64) for v, ix in groups.items()}

    def frames(self, video: str) -> np.ndarray:
        return self.frame_of_line[self.lines_by_video[video]]

    def __len__(self) -> int:
        return len(self.image_locations)


@dataclass(frozen=True, eq=False)
class Corpus:
    root: Path
    videos: Mapping[str, Video]
    splits: Mapping[Task, Mapping[Split, tuple[str, ...]]]
    labels: Mapping[Task, Mapping[str, FrameLabels]]
    templates: Mapping[Task, SubmissionTemplate]
    test_lists: Mapping[Task, tuple[str, ...]]
    test_list_files: Mapping[Task, Path] = field(default_factory=dict)
    unusable: Mapping[str, str] = field(default_factory=dict)  # video -> why it was left out

    def split_videos(self, task: Task, split: Split) -> tuple[str, ...]:
        return self.splits.get(task, {}).get(split, ())

    def num_frames(self, video: str) -> int:
        """Length of the video's frame timeline.

        The label files are trusted over the container (DESIGN.md); for an unlabeled (test)
        video the template decides, then the container's frame count, then the last face.
        """
        labels = [self.labels.get(t, {}) for t in TASKS]  # a corpus may lack a task's labels
        lengths = [lab[video].num_frames for lab in labels if video in lab]
        if lengths:
            return max(lengths)
        tmpl = [int(t.frames(video).max()) for t in self.templates.values() if video in t.videos]
        if tmpl:
            return max(tmpl)
        v = self.videos[video]
        if v.media and v.media.num_frames:
            return max(v.media.num_frames, int(v.face_frames.max(initial=0)))
        return int(v.face_frames.max(initial=0))

    def labels_on_timeline(self, task: Task, video: str) -> FrameLabels:
        """Labels padded (as invalid) to the video's timeline, which may be longer for the task."""
        lab = self.labels[task][video]
        n = self.num_frames(video)
        if lab.num_frames == n:
            return lab
        pad = n - lab.num_frames
        marker = 0 if KIND[task] == "multilabel" else INVALID_LABEL[task]  # AU: 0, as read
        fill = np.full((pad, *lab.values.shape[1:]), marker, lab.values.dtype)
        return FrameLabels(
            task,
            video,
            lab.path,
            np.concatenate([lab.values, fill]),
            np.concatenate([lab.valid, np.zeros(pad, bool)]),
        )

    def frame_times(self, video: str) -> np.ndarray:
        """Start time in seconds of each frame of the timeline, from the container's frame rate."""
        fps = self.videos[video].fps
        if not fps:
            raise ValueError(f"video {video}: frame rate unknown (no readable raw video)")
        return np.arange(self.num_frames(video), dtype=np.float64) / fps


def _walk(root: Path, max_depth: int) -> Iterator[tuple[Path, list[str], list[str]]]:
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        p = Path(dirpath)
        # Face folders hold millions of JPEGs; they are read on purpose, never walked.
        dirnames[:] = sorted(
            d for d in dirnames if not FACE_DIR_PATTERN.match(d) and not d.startswith(".")
        )
        if len(p.parts) - base_depth >= max_depth:
            dirnames[:] = []
        yield p, dirnames, filenames


def find_annotation_dirs(root: Path) -> dict[Task, list[Path]]:
    """Challenge folders (``VA_Estimation_Challenge`` ...) of any ABAW edition's annotations."""
    found: dict[Task, list[Path]] = {t: [] for t in TASKS}
    for p, dirnames, _ in _walk(root, max_depth=4):
        for d in dirnames:
            for task, names in CHALLENGE_DIRS.items():
                if d.lower() in (n.lower() for n in names):
                    found[task].append(p / d)
    for task in TASKS:
        found[task] = sorted(set(found[task]))
    return found


def _edition(path: Path) -> int:
    m = [int(x) for part in path.parts for x in _EDITION.findall(part)]
    return max(m) if m else 0


def _choose_challenge_dir(task: Task, dirs: list[Path]) -> Path | None:
    if not dirs:
        return None
    if len(dirs) == 1:
        return dirs[0]
    best = max(_edition(d) for d in dirs)
    newest = [d for d in dirs if _edition(d) == best]
    if len(newest) > 1:
        raise InputFormatError(
            newest[0],
            None,
            f"several {task.upper()} annotation folders of the same edition: "
            + ", ".join(str(d) for d in newest)
            + "; keep one, or pass the annotations root explicitly",
        )
    return newest[0]


def _read_splits(
    task: Task, challenge_dir: Path
) -> tuple[dict[Split, tuple[str, ...]], dict[str, FrameLabels]]:
    splits: dict[Split, list[str]] = {}
    labels: dict[str, FrameLabels] = {}
    seen: dict[str, Path] = {}
    for sub in sorted(challenge_dir.iterdir()):
        split = SPLIT_OF_DIR.get(sub.name.lower())
        if split is None or not sub.is_dir():
            continue
        names = splits.setdefault(split, [])
        for f in sorted(sub.glob("*.txt")):
            video = f.stem
            if video in seen:
                raise InputFormatError(
                    f, None, f"video {video} is listed twice: also in {seen[video]}"
                )
            seen[video] = f
            labels[video] = read_labels(task, f, video)
            names.append(video)
    return {s: tuple(v) for s, v in splits.items()}, labels


def _scan_faces(face_dir: Path) -> tuple[np.ndarray, int]:
    frames: list[int] = []
    width = FRAME_NAME_WIDTH
    with os.scandir(face_dir) as it:
        for entry in it:
            m = FRAME_NAME.match(entry.name)
            if m:
                frames.append(int(m.group(1)))
                width = len(m.group(1))
    return np.array(sorted(frames), dtype=np.int64), width


def find_face_dirs(root: Path) -> dict[str, Path]:
    faces: dict[str, Path] = {}
    for top in sorted(p for p in root.iterdir() if p.is_dir() and FACE_DIR_PATTERN.match(p.name)):
        for d in sorted(p for p in top.iterdir() if p.is_dir()):
            if d.name in faces:
                raise InputFormatError(
                    d, None, f"video {d.name} is listed twice: also in {faces[d.name]}"
                )
            faces[d.name] = d
    return faces


def find_raw_videos(root: Path) -> dict[str, Path]:
    """Raw video files anywhere below the root (batch1/, batch2/, new_vids/ ...), by stem."""
    raw: dict[str, Path] = {}
    for p, _, filenames in _walk(root, max_depth=6):
        for name in sorted(filenames):
            f = p / name
            if f.suffix.lower() in VIDEO_SUFFIXES and not name.startswith("."):
                if f.stem in raw:
                    raise InputFormatError(
                        f, None, f"raw video {f.stem} is listed twice: also {raw[f.stem]}"
                    )
                raw[f.stem] = f
    return raw


def audio_source_name(video: str, raw: Mapping[str, Path]) -> str | None:
    """``<base>_left`` / ``<base>_right`` share ``<base>``'s file unless they have their own."""
    if video in raw:
        return video
    base = raw_video(video)
    return base if base in raw else None


def _text_files(root: Path) -> Iterator[Path]:
    for p, _, filenames in _walk(root, max_depth=4):
        if any(ANNOTATIONS_PATTERN.search(part) for part in p.relative_to(root).parts):
            continue
        if any(
            n.lower() in (c.lower() for names in CHALLENGE_DIRS.values() for c in names)
            for n in p.relative_to(root).parts
        ):
            continue
        for name in sorted(filenames):
            if name.lower().endswith(".txt") and not name.startswith("."):
                yield p / name


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return fh.readline().strip()


def _template_task(header: str) -> Task | None:
    cols = [c.strip().lower() for c in header.split(",")]
    if not cols or cols[0] != TEMPLATE_FIRST_COLUMN:
        return None
    if cols[1:] == [c.lower() for c in LABEL_HEADERS["va"]]:
        return "va"
    if cols[1:] == [c.lower() for c in LABEL_HEADERS["au"]]:
        return "au"
    if len(cols) == 1 + NUM_EXPR_CLASSES:
        return "expr"
    return None


def _test_list_task(path: Path) -> Task | None:
    name = path.name.lower()
    if "test" not in name:
        return None
    if "expr" in name or "expression" in name:
        return "expr"
    if "action_unit" in name or "action unit" in name or re.search(r"(^|[_\-])au([_\-]|$)", name):
        return "au"
    if "valence" in name or "arousal" in name or re.search(r"(^|[_\-])va([_\-]|$)", name):
        return "va"
    return None


def _pick_newest(task: Task, kind: str, files: list[Path]) -> Path | None:
    if not files:
        return None
    preferred = [
        f
        for f in files
        if "sample" in f.name.lower()
        or "template" in f.name.lower()
        or f.parent.name.lower() == TEMPLATE_DIR
    ]
    files = preferred or files
    best = max(_edition(f) for f in files)
    newest = [f for f in files if _edition(f) == best]
    if len(newest) > 1:
        raise InputFormatError(
            newest[0],
            None,
            f"several {task.upper()} {kind} files: "
            + ", ".join(str(f) for f in newest)
            + f"; keep one, or pass --{kind.replace(' ', '-')} explicitly",
        )
    return newest[0]


def read_template(
    path: str | Path, known_videos: Mapping[str, object] | None = None, task: Task | None = None
) -> SubmissionTemplate:
    """Parse a test-set template; every line must name ``<video>/<frame>.jpg`` of a known video."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if not lines:
        raise InputFormatError(path, 1, "empty template; expected a header line")
    header = lines[0].strip()
    got_task = _template_task(header)
    if got_task is None or (task is not None and got_task != task):
        raise InputFormatError(
            path, 1, f"header {header!r} is not a VA, EXPR or AU template header"
        )
    locations: list[str] = []
    videos: list[str] = []
    frames: list[int] = []
    seen: set[str] = set()
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        loc = line.split(",", 1)[0].strip()
        parts = loc.replace("\\", "/").split("/")
        if loc.startswith(("/", "\\")) or ".." in parts or len(parts) != 2 or not parts[0]:
            raise InputFormatError(
                path, i, f"{loc!r} is outside the corpus; expected '<video>/<frame>.jpg'"
            )
        m = FRAME_NAME.match(parts[1])
        if not m or int(m.group(1)) < 1:
            raise InputFormatError(path, i, f"{loc!r}: expected a frame name like 00001.jpg")
        if known_videos is not None and parts[0] not in known_videos:
            raise InputFormatError(path, i, f"{loc!r} names unknown video {parts[0]!r}")
        if loc in seen:
            raise InputFormatError(path, i, f"{loc!r} is listed twice")
        seen.add(loc)
        locations.append(loc)
        videos.append(parts[0])
        frames.append(int(m.group(1)))
    return SubmissionTemplate(
        got_task, path, header, tuple(locations), tuple(videos), np.array(frames, np.int64)
    )


def read_test_list(path: str | Path, known_videos: Mapping[str, object]) -> tuple[str, ...]:
    path = Path(path)
    names: list[str] = []
    seen: dict[str, int] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if "," in name or "/" in name:
            raise InputFormatError(path, i, f"{name!r}: expected one video name per line")
        if name in seen:
            raise InputFormatError(
                path, i, f"video {name} is listed twice (first on line {seen[name]})"
            )
        if name not in known_videos:
            raise InputFormatError(
                path, i, f"unknown video {name!r} (no face folder, no raw video)"
            )
        seen[name] = i
        names.append(name)
    return tuple(names)


def preflight(root: str | Path, task: Task | None) -> None:
    """What a job needs of ``root`` before it starts Ray or writes anything, checked cheaply
    (no label file is read): the root, the task's annotation folder with training and
    validation label files (``task`` None: no annotations needed, as for extraction), and face
    folders or raw videos. Raises CorpusNotFoundError naming the first thing missing."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CorpusNotFoundError(f"{root}: no such directory (--data is the Aff-Wild2 root)")
    if not root.is_dir():
        raise CorpusNotFoundError(f"{root}: not a directory (--data is the Aff-Wild2 root)")
    if not find_face_dirs(root) and not find_raw_videos(root):
        raise CorpusNotFoundError(
            f"{root}: no {FACE_DIR}*/<video>/ face folders and no raw videos below it"
        )
    if task is None:
        return
    challenge = _choose_challenge_dir(task, find_annotation_dirs(root)[task])
    if challenge is None:
        raise CorpusNotFoundError(
            f"{root}: no {CHALLENGE_DIRS[task][0]} folder (expected "
            f"'<N>th ABAW Annotations/{CHALLENGE_DIRS[task][0]}/{SPLIT_DIRS['train']}/<video>.txt' "
            f"within 4 levels)"
        )
    found = {
        SPLIT_OF_DIR[d.name.lower()]: d
        for d in challenge.iterdir()
        if d.is_dir() and d.name.lower() in SPLIT_OF_DIR
    }
    for split, folder in SPLIT_DIRS.items():
        if split not in found:
            raise CorpusNotFoundError(f"{challenge}: no {folder} folder")
        if next(found[split].glob("*.txt"), None) is None:
            raise CorpusNotFoundError(f"{found[split]}: no label files (<video>.txt)")


def _find_test_files(
    root: Path,
    templates: Mapping[Task, str | Path] | None,
    test_lists: Mapping[Task, str | Path] | None,
) -> tuple[dict[Task, Path], dict[Task, Path]]:
    """Each task's template and test list: those given, else the newest found below ``root``
    (a template by its header, a test list by its name)."""
    found_templates: dict[Task, Path] = {}
    found_lists: dict[Task, Path] = {}
    candidates_t: dict[Task, list[Path]] = {t: [] for t in TASKS}
    candidates_l: dict[Task, list[Path]] = {t: [] for t in TASKS}
    if templates is None or test_lists is None:
        for f in _text_files(root):
            t = _template_task(_first_line(f))
            if t is not None:
                candidates_t[t].append(f)
                continue
            lt = _test_list_task(f)
            if lt is not None:
                candidates_l[lt].append(f)
    for task in TASKS:
        if templates is not None:
            if task in templates:
                found_templates[task] = Path(templates[task])
        else:
            chosen = _pick_newest(task, "template", candidates_t[task])
            if chosen is not None:
                found_templates[task] = chosen
        if test_lists is not None:
            if task in test_lists:
                found_lists[task] = Path(test_lists[task])
        else:
            chosen = _pick_newest(task, "test list", candidates_l[task])
            if chosen is not None:
                found_lists[task] = chosen
    return found_templates, found_lists


def _scan_videos(
    root: Path, labels: Mapping[Task, Mapping[str, FrameLabels]], probe_workers: int
) -> dict[str, Video]:
    """Every video a face folder, a label file or a raw video names (a raw video only when it
    is not a ``_left``/``_right`` pair's): its face frames and its raw video's metadata."""
    face_dirs = find_face_dirs(root)
    raw = find_raw_videos(root)
    names = set(face_dirs)
    for task in TASKS:
        names.update(labels[task])
    names.update(n for n in raw if not any(p in face_dirs for p in pair_names(n)))

    def build(name: str) -> tuple[str, np.ndarray, int, str | None]:
        if name in face_dirs:
            frames, width = _scan_faces(face_dirs[name])
        else:
            frames, width = np.zeros(0, np.int64), FRAME_NAME_WIDTH
        return name, frames, width, audio_source_name(name, raw)

    with ThreadPoolExecutor(max_workers=probe_workers) as pool:
        scanned = list(pool.map(build, sorted(names)))
        sources = sorted({s for *_, s in scanned if s is not None})
        media = dict(zip(sources, pool.map(lambda s: probe_media(raw[s]), sources)))

    videos: dict[str, Video] = {}
    for name, frames, width, source in scanned:
        videos[name] = Video(
            name, face_dirs.get(name), frames, width, media.get(source) if source else None
        )
    return videos


def load_corpus(
    root: str | Path,
    templates: Mapping[Task, str | Path] | None = None,
    test_lists: Mapping[Task, str | Path] | None = None,
    probe_workers: int = 8,
) -> Corpus:
    """Read and validate an Aff-Wild2 root. Templates and test lists are found when not given."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: corpus root is not a directory")

    splits: dict[Task, dict[Split, tuple[str, ...]]] = {}
    labels: dict[Task, dict[str, FrameLabels]] = {}
    for task, dirs in find_annotation_dirs(root).items():
        chosen = _choose_challenge_dir(task, dirs)
        if chosen is None:
            splits[task], labels[task] = {}, {}
        else:
            splits[task], labels[task] = _read_splits(task, chosen)

    videos = _scan_videos(root, labels, probe_workers)
    unusable = {
        n: f"no {FACE_DIR} folder and no raw video"
        for n, v in videos.items()
        if v.face_dir is None and v.media is None
    }
    usable = {n: v for n, v in videos.items() if n not in unusable}
    for task_splits in splits.values():
        for split, members in task_splits.items():
            task_splits[split] = tuple(v for v in members if v not in unusable)

    found_templates, found_lists = _find_test_files(root, templates, test_lists)
    parsed_templates = {t: read_template(p, usable, t) for t, p in found_templates.items()}
    parsed_lists = {t: read_test_list(p, usable) for t, p in found_lists.items()}
    for task, tmpl in parsed_templates.items():
        parsed_lists.setdefault(task, tmpl.videos)
    for task, names_ in parsed_lists.items():
        if names_:
            splits[task]["test"] = tuple(names_)

    return Corpus(
        root=root,
        videos=videos,
        splits=splits,
        labels=labels,
        templates=parsed_templates,
        test_lists=parsed_lists,
        test_list_files=found_lists,
        unusable=unusable,
    )
