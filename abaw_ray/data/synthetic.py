"""The embedded corpus: a small, seeded Aff-Wild2 look-alike with a learnable signal.

Writes exactly the distributed layout (``cropped_aligned/``, raw videos in ``batch1/``,
``batch2/``, ``new_vids/``, ``6th ABAW Annotations/``, test lists, templates) with its quirks:
several frame rates, a ``_left``/``_right`` pair sharing one raw video, missing face frames,
-5 / -1 stretches, label files a line longer or shorter than the video.

The signal: faces are drawn from facial action parameters (mouth curve and opening, eye
opening, brow height and tilt, nose wrinkle) driven by smooth valence/arousal trajectories and
by the expression class; each raw video's audio is a voiced tone whose pitch follows valence
and whose energy and syllable rate follow arousal. The 12 action units (``_action_units``) are
driven by those facial actions and the expression (AU6+AU12 with happiness, AU1+AU2+AU26 with
surprise, AU4 with anger and sadness, AU15 with sadness), and each also has episodes of its own;
each active unit changes the face where it acts (brows, lids, cheeks, lip corners, lips, jaw).
They are drawn from a random stream of their own, so the VA and EXPR labels, and which frames
have a face, are what they were before AUs existed.

``realistic=True`` adds what makes real Aff-Wild2 hard (``Realism``): every subject expresses
in their own way, labels lag the face (annotators react late), faces are occluded, blurred and
badly lit, the voice is absent much of the time and noisy when present (a ``_left``/``_right``
pair's shared track carries one person's voice), and expression classes are imbalanced as in
Aff-Wild2 (Neutral and Other dominate; Fear and Disgust are a few percent).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageFilter

from abaw_ray.affwild2 import (
    ANNOTATIONS,
    AU_CHALLENGE,
    AU_INVALID,
    EXPR_CHALLENGE,
    EXPR_INVALID,
    FACE_DIR,
    FACE_SIZE,
    LABEL_HEADERS,
    RAW_VIDEO_DIRS,
    SPLIT_DIRS,
    SPLITS,
    TEMPLATE_HEADERS,
    TEMPLATES,
    TEST_LISTS,
    VA_CHALLENGE,
    VA_INVALID,
    Split,
    face_image_name,
    image_location,
    pair_names,
    raw_video,
)
from abaw_ray.console import progress
from abaw_ray.tasks import EXPR_CLASSES, TASKS, Task

RAW_SIZE = 64  # side of the raw videos' frames (the faces, shrunk)
FRAME_RATES = (Fraction(30), Fraction(25), Fraction(30000, 1001), Fraction(15))
AUDIO_RATES = (44100, 48000, 16000)
RAW_DIR_OF_SPLIT: dict[Split, str] = dict(zip(SPLITS, RAW_VIDEO_DIRS))  # one folder per split
GENERATOR_VERSION = 3  # 3: action units (their labels, and the faces they change)
REALISM_VERSION = 1  # bumped with any change to ``Realism``: a cached realistic corpus is redone


@dataclass(frozen=True)
class EmbeddedSettings:
    """The default corpus, ``generate()``. The realistic one keeps these but for the fields
    ``Realism`` has of the same name, and adds the rest of ``Realism``."""

    videos: int = 12  # people (the _left/_right pair is two of them)
    seconds: tuple[float, float] = (9.0, 15.0)  # each video's length range
    va_hz: tuple[float, float] = (0.03, 0.35)  # valence/arousal change over 3-30 s
    valence_gain: float = 1.6  # tanh gain of the valence trajectory: how long it stays near +-1
    arousal_gain: float = 1.4  # the same for arousal
    segment_s: tuple[float, float] = (0.8, 2.5)  # length of one expression episode
    onset_s: float = 0.15  # an expression sets in over about this, rather than jumping
    blink: float = 0.02  # chance that a frame has the eyes shut
    pixel_noise: float = 6.0  # std of sensor noise, in 0-255 units
    missing_face: float = 0.03  # chance that a frame has no face image (scattered drops)
    face_gap_s: float = 0.6  # one longer gap without faces (turned away), every other video
    f0_hz: tuple[float, float] = (110.0, 220.0)  # a voice's pitch range at neutral valence
    audio_noise: float = 0.004  # std of the audio's background noise
    va_invalid_s: float = 0.8  # one -5 stretch this long, in two labelled videos of three
    expr_invalid_s: float = 0.5  # one -1 stretch this long, in two labelled videos of three
    au_invalid_s: float = 0.4  # one stretch of -1 lines this long, in two AU files of three
    au_mark: float = 0.6  # how strongly an active unit's mark shows (0: AUs leave no trace)


@dataclass(frozen=True)
class Realism:
    """The realistic corpus, ``generate(realistic=True)``: its size, and the difficulties the
    default corpus has none of."""

    videos: int = 24  # people (the _left/_right pair is two of them)
    seconds: tuple[float, float] = (20.0, 35.0)  # each video's length range
    va_lag_s: tuple[float, float] = (1.0, 2.0)  # VA labels trail the face by this (per video)
    va_hz: tuple[float, float] = (0.02, 0.12)  # valence/arousal change over 8-50 s, not 3-30
    expr_lag_s: tuple[float, float] = (0.4, 0.8)  # expression labels trail it by this
    au_lag_s: tuple[float, float] = (0.2, 0.5)  # action-unit labels trail it by this
    au_mark: float = 0.4  # how strongly an active unit's mark shows (subtler than embedded)
    segment_s: tuple[float, float] = (1.5, 5.0)  # length of one expression episode
    # Log-prior added to each class's logit (EXPR_CLASSES order): Neutral and Other dominate.
    class_prior: tuple[float, ...] = (2.2, 0.0, -1.6, -1.6, 0.4, 0.0, -0.2, 1.6)
    intensity: tuple[float, float] = (0.3, 1.0)  # how strongly an episode shows on the face
    style: tuple[float, float] = (0.4, 1.4)  # per-subject gain of each facial action
    resting_face: float = 0.3  # std of a subject's resting action offsets
    face_arousal: float = 0.5  # how much of arousal's facial cue is kept (audio carries it)
    occluded: float = 0.15  # fraction of frames with a hand/object over part of the face
    blurred: float = 0.15  # fraction of frames motion-blurred
    light_swing: float = 0.45  # relative amplitude of slow lighting changes
    pixel_noise: float = 12.0  # std of sensor noise, in 0-255 units
    jitter: float = 0.06  # slow head movement, in face half-widths
    speech: float = 0.45  # fraction of the time the subject speaks
    noise_level: tuple[float, float] = (0.01, 0.05)  # background noise std of the audio


EMBEDDED = EmbeddedSettings()
REALISM = Realism()
DEFAULT_VIDEOS = {False: EMBEDDED.videos, True: REALISM.videos}  # by ``realistic``

# Facial action offsets per expression class:
# (smile, mouth_open, eye_open, brow_raise, brow_tilt, nose_wrinkle, asymmetry)
_CLASS_ACTIONS = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # Neutral
        [-0.3, 0.1, -0.2, -0.5, 0.8, 0.2, 0.0],  # Anger
        [-0.5, 0.0, -0.3, -0.3, 0.4, 1.0, 0.2],  # Disgust
        [-0.2, 0.4, 0.6, 0.6, -0.5, 0.0, 0.0],  # Fear
        [0.9, 0.2, -0.2, 0.1, 0.0, 0.0, 0.0],  # Happiness
        [-0.7, -0.1, -0.3, 0.3, -0.8, 0.0, 0.0],  # Sadness
        [0.0, 0.9, 0.8, 0.9, 0.0, 0.0, 0.0],  # Surprise
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9],  # Other
    ],
    dtype=np.float64,
)


# Action units, in AU_NAMES order (AU1 AU2 AU4 AU6 AU7 AU10 AU12 AU15 AU23 AU24 AU25 AU26). A
# unit is active where its drive is above 0, or in one of its own episodes. The drive: the
# facial actions (smile, mouth_open, brow_raise, brow_tilt, nose_wrinkle) weighted by
# _AU_FROM_ACTIONS, plus _AU_FROM_CLASSES of the expression class, plus _AU_BIAS.
_AU_FROM_ACTIONS = np.array(
    [  # smile, mouth_open, brow_raise, brow_tilt, nose_wrinkle
        [0.0, 0.0, 1.0, 0.0, 0.0],  # AU1 inner brow raiser
        [0.0, 0.0, 1.2, 0.0, 0.0],  # AU2 outer brow raiser
        [0.0, 0.0, 0.0, 1.2, 0.0],  # AU4 brow lowerer
        [1.1, 0.0, 0.0, 0.0, 0.0],  # AU6 cheek raiser
        [0.0, 0.0, 0.0, 0.6, 0.6],  # AU7 lid tightener
        [0.0, 0.0, 0.0, 0.0, 1.2],  # AU10 upper lip raiser
        [1.4, 0.0, 0.0, 0.0, 0.0],  # AU12 lip corner puller
        [-0.8, 0.0, 0.0, 0.0, 0.0],  # AU15 lip corner depressor
        [0.0, 0.0, 0.0, 0.5, 0.0],  # AU23 lip tightener
        [0.0, -0.5, 0.0, 0.3, 0.0],  # AU24 lip pressor
        [0.0, 2.2, 0.0, 0.0, 0.0],  # AU25 lips part
        [0.0, 1.5, 0.0, 0.0, 0.0],  # AU26 jaw drop
    ]
)
_AU_ACTION_COLUMNS = [0, 1, 3, 4, 5]  # the columns of _CLASS_ACTIONS' order read above
_AU_FROM_CLASSES = np.array(
    [  # Neutral Anger Disgust Fear Happiness Sadness Surprise Other
        [0, 0, 0, 0.4, 0, 0.5, 0.4, 0],  # AU1
        [0, 0, 0, 0.2, 0, 0, 0.4, 0],  # AU2
        [0, 0.5, 0.3, 0, 0, 0.5, 0, 0],  # AU4
        [0, 0, 0, 0, 0.4, 0, 0, 0],  # AU6
        [0, 0.5, 0.4, 0, 0.2, 0, 0, 0],  # AU7
        [0, 0.2, 0.5, 0, 0.1, 0, 0, 0],  # AU10
        [0, 0, 0, 0, 0.4, 0, 0, 0],  # AU12
        [0, 0, 0.2, 0, 0, 0.6, 0, 0],  # AU15
        [0, 0.6, 0, 0, 0, 0, 0, 0],  # AU23
        [0, 0.5, 0.2, 0, 0, 0, 0, 0],  # AU24
        [0, 0, 0, 0.3, 0, 0, 0.4, 0],  # AU25
        [0, 0, 0, 0, 0, 0, 0.6, 0],  # AU26
    ]
)
_AU_BIAS = np.array([-1.1, -1.15, -0.95, -0.85, -0.55, -0.6, -0.7, -1.3, -1.1, -0.85, -0.65, -1.35])
# Fraction of frames each unit is active on its own (episodes unrelated to the expression).
_AU_EPISODES = (0.04, 0.03, 0.06, 0.06, 0.15, 0.12, 0.06, 0.02, 0.02, 0.02, 0.15, 0.02)
_AU_STREAM = 1  # the AUs' random stream of a video: default_rng([seed, video, _AU_STREAM])


@dataclass(frozen=True)
class SyntheticVideo:
    """What the generator wrote for one video: the truth that ``check`` must find."""

    name: str
    split: str  # train | val | test
    raw_file: str  # path relative to the root
    fps: float
    num_frames: int  # frames in the raw video
    va_label_lines: int | None  # None when the video has no VA file
    expr_label_lines: int | None
    va_invalid: int
    expr_invalid: int
    missing_faces: int  # frames of the label timeline (or the video) without a face image
    audio_rate: int
    au_label_lines: int | None = None  # None when the video has no AU file
    au_invalid: int = 0


@dataclass(frozen=True)
class SyntheticCorpus:
    root: Path
    seed: int
    videos: tuple[SyntheticVideo, ...] = field(default_factory=tuple)

    def by_name(self) -> dict[str, SyntheticVideo]:
        return {v.name: v for v in self.videos}


def _smooth_trajectory(
    rng: np.random.Generator, t: np.ndarray, scale: float, hz: tuple[float, float]
) -> np.ndarray:
    freqs = rng.uniform(*hz, size=4)
    phases = rng.uniform(0, 2 * np.pi, size=4)
    amps = rng.uniform(0.4, 1.0, size=4) / np.arange(1, 5)
    x = sum(a * np.sin(2 * np.pi * f * t + p) for a, f, p in zip(amps, freqs, phases))
    x = x / (np.abs(x).max() + 1e-9)
    return np.tanh(scale * x + rng.uniform(-0.3, 0.3)).astype(np.float64) * 0.95


def _expression_classes(
    rng: np.random.Generator,
    valence: np.ndarray,
    arousal: np.ndarray,
    fps: float,
    realism: Realism | None = None,
) -> np.ndarray:
    """Piecewise-constant classes, each segment drawn from what its valence/arousal suggest."""
    n = len(valence)
    out = np.zeros(n, dtype=np.int64)
    segment = realism.segment_s if realism else EMBEDDED.segment_s
    prior = np.array(realism.class_prior) if realism else np.zeros(len(EXPR_CLASSES))
    k = 0
    while k < n:
        length = max(1, int(rng.uniform(*segment) * fps))
        v, a = valence[k], arousal[k]
        logits = np.array(
            [
                1.2 - 2 * (abs(v) + abs(a)),  # Neutral
                2.5 * (-v) + 2 * a - 1.5,  # Anger
                2 * (-v) - 1.2,  # Disgust
                2 * (-v) + 2.5 * a - 2,  # Fear
                3 * v - 0.6,  # Happiness
                2.5 * (-v) - 2 * a - 1,  # Sadness
                3 * a - abs(v) - 1.2,  # Surprise
                -1.0,  # Other
            ]
        )
        logits = logits + prior
        p = np.exp(logits - logits.max())
        out[k : k + length] = rng.choice(len(EXPR_CLASSES), p=p / p.sum())
        k += length
    return out


def _set_in(x: np.ndarray, fps: float) -> np.ndarray:
    """``x`` [T, D] (float64) followed with a lag: each change sets in over about ``onset_s``
    rather than jumping (a first-order filter, the first frame as it is)."""
    alpha = 1.0 - np.exp(-1.0 / (EMBEDDED.onset_s * fps))
    out = np.empty_like(x)
    acc = x[0]
    for i in range(len(x)):
        acc = acc + alpha * (x[i] - acc)
        out[i] = acc
    return out


def _actions(
    valence: np.ndarray,
    arousal: np.ndarray,
    classes: np.ndarray,
    fps: float,
    rng: np.random.Generator,
    identity: dict | None = None,
    realism: Realism | None = None,
) -> np.ndarray:
    """Per-frame facial action parameters [T, 7] (see ``_CLASS_ACTIONS``)."""
    cls = _CLASS_ACTIONS[classes]
    if realism is not None:
        # Each episode shows with its own intensity.
        starts = np.flatnonzero(np.diff(classes, prepend=-2))
        strength = np.repeat(
            rng.uniform(*realism.intensity, len(starts)), np.diff([*starts, len(classes)])
        )
        cls = cls * strength[:, None]
    # Expressions set in over about ``onset_s`` rather than jumping.
    act = _set_in(cls, fps)
    face_arousal = realism.face_arousal * arousal if realism else arousal
    act[:, 0] += 0.8 * valence
    act[:, 1] += 0.35 * np.clip(face_arousal, 0, None) + 0.1
    act[:, 2] += 0.45 * face_arousal
    act[:, 3] += 0.35 * face_arousal
    if realism is not None and identity is not None:
        act = act * identity["style"] + identity["rest"]
    blink = rng.random(len(valence)) < EMBEDDED.blink
    act[blink, 2] = -1.0
    return act


_GRID_Y, _GRID_X = np.mgrid[0:FACE_SIZE, 0:FACE_SIZE].astype(np.float32) / (FACE_SIZE / 2) - 1


def _draw_eyes_and_brows(
    img: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    eye_open: float,
    brow_raise: float,
    brow_tilt: float,
    hair: np.ndarray,
) -> None:
    dark = np.array([40, 25, 20], np.float32)
    for side in (-1, 1):
        ex, ey = side * 0.3, -0.12
        ry = max(0.015, 0.06 + 0.045 * eye_open)
        eye = ((x - ex) / 0.13) ** 2 + ((y - ey) / ry) ** 2 <= 1
        img[eye] = (235, 235, 235)
        pupil = ((x - ex) ** 2 + (y - ey) ** 2 <= 0.045**2) & eye
        img[pupil] = dark
        # Brow: a thick segment whose inner end moves with tilt (anger: inner end down).
        by = ey - 0.16 - 0.1 * brow_raise
        inner_drop = 0.08 * brow_tilt
        u = (x - ex) * side  # 0 at eye center, negative toward the nose
        brow_y = by + inner_drop * np.clip(-u / 0.16, 0, 1) - 0.02 * np.clip(u / 0.16, 0, 1)
        brow = (np.abs(y - brow_y) < 0.028) & (np.abs(x - ex) < 0.17)
        img[brow] = hair


def _draw_nose_and_mouth(
    img: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    smile: float,
    mouth_open: float,
    wrinkle: float,
    asym: float,
) -> None:
    # Nose wrinkle: short dark strokes that appear with disgust.
    if wrinkle > 0.2:
        for dy in (0.02, 0.07):
            stroke = (np.abs(y - dy) < 0.012 * wrinkle + 0.004) & (np.abs(x) < 0.09)
            img[stroke] = img[stroke] * 0.5

    my = 0.42
    half_width = 0.3 - 0.05 * max(mouth_open, 0)
    # Smile lowers the lip's middle against its corners (a U); a frown raises it.
    curve = 0.14 * np.tanh(smile)
    tilt = 0.12 * asym
    inside = np.abs(x) < half_width
    lip_y = my + curve * (1 - (x / half_width) ** 2) - curve / 2 + tilt * x
    opening = float(np.clip(0.02 + 0.09 * mouth_open, 0.0, 0.14))
    mouth_hole = inside & (y > lip_y - opening) & (y < lip_y + opening)
    img[mouth_hole] = (70, 20, 30)
    lips = inside & (np.abs(np.abs(y - lip_y) - opening) < 0.02)
    img[lips] = (170, 60, 70)


def _blend(img: np.ndarray, where: np.ndarray, colour, amount: float) -> None:
    img[where] = img[where] * (1.0 - amount) + np.asarray(colour, np.float32) * amount


def _draw_action_units(
    img: np.ndarray, x: np.ndarray, y: np.ndarray, shown: np.ndarray, skin: np.ndarray
) -> None:
    """Each unit's mark where it acts, as strong as ``shown`` ([12] in [0, 1], AU_NAMES
    order): forehead lines (AU1 centre, AU2 sides), a furrow between the brows (AU4), raised
    cheeks (AU6), tightened lower lids (AU7), lines beside the nose (AU10), pulled (AU12) or
    lowered (AU15) lip corners, pressed lips (AU23), a bulge under the lips (AU24), teeth
    (AU25) and a dropped jaw's shadow (AU26). Draws no random numbers."""
    dark, ax = np.array([70, 45, 40], np.float32), np.abs(x)
    au1, au2, au4, au6, au7, au10, au12, au15, au23, au24, au25, au26 = shown
    if au1 > 0:
        _blend(img, (ax < 0.14) & (np.abs(y + 0.5) < 0.018), dark, au1)
    if au2 > 0:
        _blend(img, (ax > 0.24) & (ax < 0.46) & (np.abs(y + 0.52) < 0.018), dark, au2)
    if au4 > 0:
        _blend(img, (np.abs(ax - 0.045) < 0.014) & (y > -0.36) & (y < -0.2), dark, au4)
    if au6 > 0:
        cheek = ((ax - 0.33) / 0.11) ** 2 + ((y - 0.12) / 0.06) ** 2 <= 1
        _blend(img, cheek, (200, 90, 90), au6)
    if au7 > 0:
        lid = ((ax - 0.3) / 0.13) ** 2 + ((y + 0.07) / 0.03) ** 2 <= 1
        _blend(img, lid, skin * 0.75, au7)
    if au10 > 0:
        line = (np.abs(ax - (0.12 + 0.4 * (y - 0.15))) < 0.014) & (y > 0.15) & (y < 0.33)
        _blend(img, line, dark, au10)
    for amount, corner_y in ((au12, 0.33), (au15, 0.52)):
        if amount > 0:
            dot = ((ax - 0.31) / 0.035) ** 2 + ((y - corner_y) / 0.035) ** 2 <= 1
            _blend(img, dot, dark, amount)
    if au23 > 0:
        _blend(img, (ax < 0.22) & (np.abs(y - 0.42) < 0.02), (110, 30, 40), au23)
    if au24 > 0:
        bulge = (x / 0.14) ** 2 + ((y - 0.58) / 0.04) ** 2 <= 1
        _blend(img, bulge, skin * 1.25, au24)
    if au25 > 0:
        _blend(img, (ax < 0.12) & (np.abs(y - 0.42) < 0.016), (245, 245, 235), au25)
    if au26 > 0:
        jaw = (x / 0.22) ** 2 + ((y - 0.74) / 0.07) ** 2 <= 1
        _blend(img, jaw, skin * 0.55, au26)


def draw_face(
    action: np.ndarray,
    identity: dict,
    rng: np.random.Generator,
    conditions: dict | None = None,
    units: np.ndarray | None = None,
) -> np.ndarray:
    """One FACE_SIZE x FACE_SIZE RGB face; ``action`` is (smile, mouth_open, eye_open, brow_raise,
    brow_tilt, nose_wrinkle, asymmetry); ``units`` ([12], AU_NAMES order, 0 to 1) how strongly
    each action unit's mark shows. ``conditions`` (realistic corpus) holds this
    frame's head offset ``dx``/``dy``, ``light`` gain, ``noise`` std, an ``occluder`` box
    (x0, y0, x1, y1 in [-1, 1] units, or None) and a ``blur`` radius (0: sharp)."""
    c = conditions or {}
    smile, mouth_open, eye_open, brow_raise, brow_tilt, wrinkle, asym = action
    x = _GRID_X - identity["cx"] - c.get("dx", 0.0) - rng.normal(0, 0.01)
    y = _GRID_Y - identity["cy"] - c.get("dy", 0.0) - rng.normal(0, 0.01)
    img = np.empty((FACE_SIZE, FACE_SIZE, 3), np.float32)
    img[:] = identity["background"]
    img += _GRID_Y[..., None] * 20
    face = (x / identity["rx"]) ** 2 + (y / identity["ry"]) ** 2 <= 1
    img[face] = identity["skin"]
    _draw_eyes_and_brows(img, x, y, eye_open, brow_raise, brow_tilt, identity["hair"])
    _draw_nose_and_mouth(img, x, y, smile, mouth_open, wrinkle, asym)
    if units is not None:
        _draw_action_units(img, x, y, units, np.asarray(identity["skin"], np.float32))

    box = c.get("occluder")
    if box is not None:
        x0, y0, x1, y1 = box
        img[(_GRID_X >= x0) & (_GRID_X <= x1) & (_GRID_Y >= y0) & (_GRID_Y <= y1)] = c[
            "occluder_colour"
        ]
    img *= identity["light"] * c.get("light", 1.0)
    img += rng.normal(0, c.get("noise", EMBEDDED.pixel_noise), img.shape)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if c.get("blur", 0) > 0:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(c["blur"])))
    return out


def _stretches(rng: np.random.Generator, n: int, fraction: float, fps: float) -> np.ndarray:
    """A boolean mask covering about ``fraction`` of ``n`` frames in stretches of 0.3-2 s."""
    mask = np.zeros(n, bool)
    while mask.mean() < fraction:
        start = int(rng.integers(0, n))
        mask[start : start + int(rng.uniform(0.3, 2.0) * fps)] = True
    return mask


def _slow_noise(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """A smooth random signal in [-1, 1] over ``n`` frames (changes over seconds)."""
    t = np.arange(n) / fps
    x = sum(
        rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * rng.uniform(0.02, 0.3) * t + rng.uniform(0, 7))
        for _ in range(3)
    )
    return x / (np.abs(x).max() + 1e-9)


def _frame_conditions(rng: np.random.Generator, n: int, fps: float, realism: Realism) -> list[dict]:
    """Per-frame capture conditions of one realistic video: head movement, lighting,
    occluders (the same box over a stretch), blur and sensor noise."""
    dx = realism.jitter * _slow_noise(rng, n, fps)
    dy = realism.jitter * _slow_noise(rng, n, fps)
    light = 1.0 + realism.light_swing * _slow_noise(rng, n, fps)
    occluded = _stretches(rng, n, realism.occluded, fps)
    blurred = _stretches(rng, n, realism.blurred, fps)
    out, box, colour = [], None, None
    for k in range(n):
        if occluded[k] and (box is None or not occluded[k - 1]):
            # A hand over the mouth, the eyes or one side of the face, for this stretch.
            box = [(-0.5, 0.15, 0.5, 0.7), (-0.7, -0.35, 0.7, 0.0), (0.0, -0.6, 0.8, 0.7)][
                int(rng.integers(0, 3))
            ]
            colour = rng.uniform([120, 80, 60], [230, 190, 160]).astype(np.float32)
        out.append(
            {
                "dx": float(dx[k]),
                "dy": float(dy[k]),
                "light": float(max(light[k], 0.25)),
                "noise": realism.pixel_noise,
                "occluder": box if occluded[k] else None,
                "occluder_colour": colour,
                "blur": float(rng.uniform(1.0, 2.5)) if blurred[k] else 0.0,
            }
        )
    return out


def _voice(
    rng: np.random.Generator,
    t_audio: np.ndarray,
    valence: np.ndarray,
    arousal: np.ndarray,
    base_f0: float,
) -> np.ndarray:
    f0 = base_f0 * 2.0 ** (0.4 * valence)
    sr = 1.0 / (t_audio[1] - t_audio[0])
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tone = sum(np.sin(h * phase) / h for h in range(1, 6))
    energy = 0.03 + 0.3 * ((arousal + 1) / 2) ** 1.5
    syllable_rate = 3.0 + 2.0 * (arousal + 1) / 2
    syl_phase = 2 * np.pi * np.cumsum(syllable_rate) / sr + rng.uniform(0, 2 * np.pi)
    envelope = np.clip(0.55 + 0.45 * np.sin(syl_phase), 0, 1) ** 2
    return energy * envelope * tone * 0.4


def _write_raw_video(
    path: Path, frames: np.ndarray, fps: Fraction, audio: np.ndarray, audio_rate: int
) -> None:
    """Frames [T, H, W, 3] uint8 and mono float audio into an .mp4 (AAC) or .avi (PCM)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    acodec = "aac" if path.suffix == ".mp4" else "pcm_s16le"
    with av.open(str(tmp), "w", format=path.suffix.lstrip(".")) as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        ast = c.add_stream(acodec, rate=audio_rate)
        ast.layout = "mono"
        for frame in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in vs.encode():
            c.mux(packet)
        block = 1024
        for start in range(0, len(audio), block):
            chunk = np.clip(audio[start : start + block], -1, 1).astype(np.float32)
            if acodec == "aac":
                af = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
            else:
                pcm = (chunk * 32767).astype(np.int16)[None]
                af = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            af.sample_rate = audio_rate
            af.pts = start
            for packet in ast.encode(af):
                c.mux(packet)
        for packet in ast.encode():
            c.mux(packet)
    os.replace(tmp, path)


def _identity(rng: np.random.Generator, realism: Realism | None = None) -> dict:
    style = {}
    if realism is not None:
        style = {
            "style": rng.uniform(*realism.style, size=7),
            "rest": rng.normal(0, realism.resting_face, size=7),
        }
    return {
        **style,
        "cx": rng.uniform(-0.05, 0.05),
        "cy": rng.uniform(-0.03, 0.05),
        "rx": rng.uniform(0.62, 0.75),
        "ry": rng.uniform(0.8, 0.92),
        "skin": rng.uniform([150, 100, 80], [240, 200, 170]).astype(np.float32),
        "hair": rng.uniform([20, 10, 5], [110, 80, 60]).astype(np.float32),
        "background": rng.uniform(30, 200, size=3).astype(np.float32),
        "light": rng.uniform(0.75, 1.1),
    }


def _write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _lagged(x: np.ndarray, frames: int) -> np.ndarray:
    """What a late annotator writes: frame k holds ``x[k - frames]`` (the first value before
    that)."""
    if frames <= 0:
        return x
    return np.concatenate([np.repeat(x[:1], frames, axis=0), x[:-frames]])[: len(x)]


@dataclass
class _Pair:
    """The _left/_right pair (videos 0 and 1, in training): one raw video, its frame rate,
    length and audio rate, and each person's shrunk faces and voice until both are drawn."""

    fps: Fraction
    duration: float
    audio_rate: int
    faces: list[np.ndarray] = field(default_factory=list)
    voices: list[np.ndarray] = field(default_factory=list)


_PAIR = (0, 1)  # the videos of the pair, in the order of ``PAIR_SIDES``
# The ``SyntheticVideo`` fields that count a video's labels, for a video without any (test).
_UNLABELLED = dict(
    va_label_lines=None,
    expr_label_lines=None,
    va_invalid=0,
    expr_invalid=0,
    au_label_lines=None,
    au_invalid=0,
)


@dataclass(frozen=True, eq=False)
class _Truth:
    """One video's hidden truth per frame: what its faces, voice and labels are drawn from."""

    t: np.ndarray  # each frame's time, seconds
    valence: np.ndarray
    arousal: np.ndarray
    classes: np.ndarray  # expression class per frame
    identity: dict  # the person's look (and, realistic, their way of expressing)
    actions: np.ndarray  # facial action parameters [T, 7]
    units: np.ndarray | None = None  # action units active per frame, bool [T, 12]


def _action_units(rng: np.random.Generator, truth: _Truth, fps: float) -> np.ndarray:
    """Which action units are active in each frame, bool [T, 12] (AU_NAMES order): where the
    facial actions and the expression drive them, or in episodes of their own."""
    classes = np.eye(len(EXPR_CLASSES))[truth.classes]
    drive = truth.actions[:, _AU_ACTION_COLUMNS] @ _AU_FROM_ACTIONS.T
    drive += classes @ _AU_FROM_CLASSES.T + _AU_BIAS
    n = len(truth.t)
    episodes = np.stack([_stretches(rng, n, f, fps) for f in _AU_EPISODES], axis=1)
    return (drive > 0) | episodes


def _shown_units(units: np.ndarray, fps: float, mark: float) -> np.ndarray:
    """How strongly each unit's mark shows, float [T, 12]: its activity, setting in and
    fading over about ``onset_s`` as expressions do, times ``mark``."""
    return _set_in(units.astype(np.float64), fps) * mark


def _names_and_splits(videos: int, seed: int) -> tuple[list[str], list[Split]]:
    """Names in Aff-Wild2's styles (``<n>-<fps>-<w>x<h>``, ``video<n>``, a ``_left``/``_right``
    pair) and their splits: a quarter (at least 2) test, a quarter validation, the rest (the
    pair first) training."""
    n_test = max(2, videos // 4)
    n_val = max(2, videos // 4)
    splits: list[Split] = ["train"] * (videos - n_val - n_test) + ["val"] * n_val
    splits += ["test"] * n_test
    pair = pair_names(f"{100 + seed}-{int(FRAME_RATES[0])}-1280x720")
    names = []
    for i in range(videos):
        if i in _PAIR:
            names.append(pair[i])
        elif i % 3 == 0:
            names.append(f"video{i + 10 * seed}")
        else:
            names.append(f"{i}-{int(FRAME_RATES[i % len(FRAME_RATES)])}-640x360")
    return names, splits


def _test_lists(names: list[str], splits: list[Split]) -> dict[Task, list[str]]:
    """The test videos each task lists (and its template holds): VA all but the first, EXPR all
    but the last, so the two differ, AU all of them; each all of them when there are only
    two."""
    test = [n for n, s in zip(names, splits) if s == "test"]
    if len(test) <= 2:
        return {"va": test, "expr": test, "au": test}
    return {"va": test[1:], "expr": test[:-1], "au": test}


def _video_truth(
    rng: np.random.Generator, t: np.ndarray, fps: float, realism: Realism | None
) -> _Truth:
    hz = realism.va_hz if realism else EMBEDDED.va_hz
    valence = _smooth_trajectory(rng, t, EMBEDDED.valence_gain, hz)
    arousal = _smooth_trajectory(rng, t, EMBEDDED.arousal_gain, hz)
    classes = _expression_classes(rng, valence, arousal, fps, realism)
    if realism is None:  # this order of draws is what the default corpus always had
        actions = _actions(valence, arousal, classes, fps, rng)
        identity = _identity(rng)
    else:
        identity = _identity(rng, realism)
        actions = _actions(valence, arousal, classes, fps, rng, identity, realism)
    return _Truth(t, valence, arousal, classes, identity, actions)


def _faces(
    rng: np.random.Generator, truth: _Truth, fps: float, realism: Realism | None
) -> np.ndarray:
    """Every frame's face, uint8 [T, FACE_SIZE, FACE_SIZE, 3] (realistic: in its conditions),
    with the marks of its active units."""
    n = len(truth.t)
    conditions = _frame_conditions(rng, n, fps, realism) if realism else [None] * n
    mark = realism.au_mark if realism else EMBEDDED.au_mark
    shown = _shown_units(truth.units, fps, mark) if truth.units is not None else [None] * n
    return np.stack(
        [
            draw_face(a, truth.identity, rng, c, u)
            for a, c, u in zip(truth.actions, conditions, shown)
        ]
    )


def _present_faces(rng: np.random.Generator, n: int, fps: float, gap: bool) -> np.ndarray:
    """Which frames have a face image: scattered drops, plus one longer gap (the face turned
    away) when ``gap``."""
    present = rng.random(n) > EMBEDDED.missing_face
    if gap:
        g0 = int(rng.integers(n // 4, n // 2))
        present[g0 : g0 + int(EMBEDDED.face_gap_s * fps)] = False
    return present


def _write_faces(face_dir: Path, faces: np.ndarray, present: np.ndarray) -> None:
    face_dir.mkdir(parents=True, exist_ok=True)
    for k in np.flatnonzero(present):
        Image.fromarray(faces[k]).save(face_dir / face_image_name(k + 1), quality=90)


def _audio(
    rng: np.random.Generator,
    truth: _Truth,
    duration: float,
    audio_rate: int,
    fps: float,
    realism: Realism | None,
) -> np.ndarray:
    """The person's voice at ``audio_rate`` over background noise (realistic: the person
    speaks part of the time)."""
    t = truth.t
    t_audio = np.arange(int(duration * audio_rate)) / audio_rate
    valence = np.interp(t_audio, t, truth.valence)
    arousal = np.interp(t_audio, t, truth.arousal)
    voice = _voice(rng, t_audio, valence, arousal, rng.uniform(*EMBEDDED.f0_hz))
    if realism is None:
        voice += rng.normal(0, EMBEDDED.audio_noise, len(voice))
    else:
        speaking = _stretches(rng, len(t) + 1, realism.speech, fps)
        voice *= speaking[np.minimum((t_audio * fps).astype(int), len(t))]
        voice += rng.normal(0, rng.uniform(*realism.noise_level), len(voice))
    return voice


def _write_raw(
    out: Path,
    i: int,
    name: str,
    split: Split,
    faces: np.ndarray,
    voice: np.ndarray,
    fps: Fraction,
    audio_rate: int,
    pair: _Pair,
    realism: Realism | None,
) -> str:
    """Video ``i``'s raw video (its faces shrunk, its voice as the audio track); the pair's
    one is written once both people are drawn, side by side. Returns its path under ``out``."""
    small = np.stack([np.asarray(Image.fromarray(f).resize((RAW_SIZE, RAW_SIZE))) for f in faces])
    suffix = ".avi" if i % 4 == 3 else ".mp4"
    raw_rel = f"{RAW_DIR_OF_SPLIT[split]}/{raw_video(name)}{suffix}"
    if i not in _PAIR:
        _write_raw_video(out / raw_rel, small, fps, voice, audio_rate)
        return raw_rel
    pair.faces.append(small)
    pair.voices.append(voice)
    if len(pair.faces) == len(_PAIR):
        both = np.concatenate(pair.faces, axis=2)
        # Realistic: the shared track is the left person's voice only.
        track = pair.voices[0] if realism else pair.voices[0] + pair.voices[1]
        _write_raw_video(out / raw_rel, both, fps, track, audio_rate)
    return raw_rel


def _labels(
    rng: np.random.Generator, i: int, truth: _Truth, fps: float, realism: Realism | None
) -> tuple[np.ndarray, np.ndarray]:
    """What video ``i``'s label files hold: VA [L, 2] to 3 decimals and classes [L], with one
    -5 stretch and one -1 stretch (each in two videos of three); realistic: labels lag."""
    n = len(truth.t)
    # Label files a line off the video: one longer (i == 2), one shorter (i == 3).
    label_len = n + 1 if i == 2 else n - 1 if i == 3 else n
    va = np.stack([truth.valence, truth.arousal], axis=1)
    classes = truth.classes
    if realism is not None:
        va = _lagged(va, int(rng.uniform(*realism.va_lag_s) * fps))
        classes = _lagged(classes, int(rng.uniform(*realism.expr_lag_s) * fps))
    if label_len > n:
        va = np.concatenate([va, va[-1:]])
        cls = np.concatenate([classes, classes[-1:]])
    else:
        va, cls = va[:label_len], classes[:label_len]
    va = np.round(va, 3)
    cls = cls.copy()
    if i % 3 != 1:
        s0 = int(rng.integers(0, label_len // 2))
        va[s0 : s0 + int(EMBEDDED.va_invalid_s * fps)] = VA_INVALID
    if i % 3 != 2:
        s0 = int(rng.integers(label_len // 2, label_len - 5))
        cls[s0 : s0 + int(EMBEDDED.expr_invalid_s * fps)] = EXPR_INVALID
    return va, cls


def _au_labels(
    rng: np.random.Generator,
    i: int,
    units: np.ndarray,
    label_len: int,
    fps: float,
    realism: Realism | None,
) -> np.ndarray:
    """What video ``i``'s AU file holds, int [L, 12] (0/1; a -1 line where not annotated),
    on the timeline of its other label files; one -1 stretch in two videos of three;
    realistic: the labels lag the face."""
    au = units.astype(np.int64)
    if realism is not None:
        au = _lagged(au, int(rng.uniform(*realism.au_lag_s) * fps))
    au = np.concatenate([au, au[-1:]]) if label_len > len(au) else au[:label_len].copy()
    if i % 3 != 0:
        s0 = int(rng.integers(0, max(1, label_len - int(EMBEDDED.au_invalid_s * fps))))
        au[s0 : s0 + int(EMBEDDED.au_invalid_s * fps)] = AU_INVALID
    return au


def _write_labels(
    out: Path,
    i: int,
    name: str,
    split: Split,
    va: np.ndarray,
    cls: np.ndarray,
    au: np.ndarray,
) -> dict[str, int | None]:
    """Video ``i``'s label files, and the ``SyntheticVideo`` fields that count them. Training
    videos may lack a task's labels (as in Aff-Wild2); validation videos carry all three, so
    each task keeps at least two to validate (and split) on."""
    has_va = split == "val" or i % 5 != 4
    has_expr = split == "val" or i % 5 != 1 or not has_va
    has_au = split == "val" or i % 5 != 3
    counts = dict(_UNLABELLED)
    if has_au:
        counts.update(au_label_lines=len(au), au_invalid=int((au[:, 0] == AU_INVALID).sum()))
        _write_text(
            out / ANNOTATIONS / AU_CHALLENGE / SPLIT_DIRS[split] / f"{name}.txt",
            [",".join(LABEL_HEADERS["au"])] + [",".join(map(str, row)) for row in au],
        )
    if has_va:
        counts.update(va_label_lines=len(va), va_invalid=int((va[:, 0] == VA_INVALID).sum()))
        _write_text(
            out / ANNOTATIONS / VA_CHALLENGE / SPLIT_DIRS[split] / f"{name}.txt",
            [",".join(LABEL_HEADERS["va"])] + [f"{a:g},{b:g}" for a, b in va],
        )
    if has_expr:
        counts.update(expr_label_lines=len(cls), expr_invalid=int((cls == EXPR_INVALID).sum()))
        _write_text(
            out / ANNOTATIONS / EXPR_CHALLENGE / SPLIT_DIRS[split] / f"{name}.txt",
            [",".join(LABEL_HEADERS["expr"])] + [str(c) for c in cls],
        )
    return counts


def _write_video(
    out: Path,
    i: int,
    name: str,
    split: Split,
    seed: int,
    seconds: tuple[float, float],
    pair: _Pair,
    realism: Realism | None,
) -> SyntheticVideo:
    """Everything of video ``i``, drawn from its own seeded generator in this order (which the
    default corpus's bytes depend on): length, truth, faces, missing faces, voice, labels.
    The action units come from a stream of their own, drawn before the faces they mark."""
    rng = np.random.default_rng([seed, i])
    in_pair = i in _PAIR
    fps = pair.fps if in_pair else FRAME_RATES[i % len(FRAME_RATES)]
    duration = pair.duration if in_pair else rng.uniform(*seconds)
    audio_rate = pair.audio_rate if in_pair else AUDIO_RATES[i % len(AUDIO_RATES)]
    n = int(duration * float(fps))
    truth = _video_truth(rng, np.arange(n) / float(fps), float(fps), realism)
    au_rng = np.random.default_rng([seed, i, _AU_STREAM])  # VA/EXPR draws stay as they were
    truth = replace(truth, units=_action_units(au_rng, truth, float(fps)))
    faces = _faces(rng, truth, float(fps), realism)
    present = _present_faces(rng, n, float(fps), gap=i % 2 == 0)
    _write_faces(out / FACE_DIR / name, faces, present)
    voice = _audio(rng, truth, duration, audio_rate, float(fps), realism)
    raw_rel = _write_raw(out, i, name, split, faces, voice, fps, audio_rate, pair, realism)
    counts = dict(_UNLABELLED)
    label_len = n
    if split != "test":
        va, cls = _labels(rng, i, truth, float(fps), realism)
        au = _au_labels(au_rng, i, truth.units, len(va), float(fps), realism)
        counts = _write_labels(out, i, name, split, va, cls, au)
        label_len = len(va)
    on_timeline = np.zeros(label_len, bool)  # the label timeline's frames that have a face
    on_timeline[: min(label_len, n)] = present[: min(label_len, n)]
    return SyntheticVideo(
        name=name,
        split=split,
        raw_file=raw_rel,
        fps=float(fps),
        num_frames=n,
        missing_faces=int((~on_timeline).sum()),
        audio_rate=audio_rate,
        **counts,
    )


def _template_lines(task: Task, video: str, num_frames: int) -> list[str]:
    """A test video's template lines: every frame, with zeros where a submission's values go."""
    zeros = ",".join(["0"] * len(LABEL_HEADERS[task])) if task != "expr" else "0"
    return [f"{image_location(video, k)},{zeros}" for k in range(1, num_frames + 1)]


def generate(
    out: str | Path,
    videos: int | None = None,
    seed: int = 0,
    seconds: tuple[float, float] | None = None,
    realistic: bool = False,
) -> SyntheticCorpus:
    """Write the corpus under ``out`` (created; must not hold a corpus already).

    ``videos`` counts people (default: ``DEFAULT_VIDEOS``): one ``_left``/``_right`` pair
    shares a raw video. Half the videos train, a quarter validate, a quarter are the test
    set. ``realistic`` adds the difficulties of ``Realism``; ``seconds`` is each video's
    length range (default: ``EmbeddedSettings.seconds``, or ``Realism.seconds``).
    """
    realism = REALISM if realistic else None
    if videos is None:
        videos = DEFAULT_VIDEOS[realistic]
    if seconds is None:
        seconds = realism.seconds if realism else EMBEDDED.seconds
    if videos < 6:
        raise ValueError("the embedded corpus needs at least 6 videos (train, val, test, a pair)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names, splits = _names_and_splits(videos, seed)
    tests = _test_lists(names, splits)
    rng = np.random.default_rng(seed)
    pair = _Pair(FRAME_RATES[0], rng.uniform(*seconds), AUDIO_RATES[0])
    truths: list[SyntheticVideo] = []
    templates: dict[Task, list[str]] = {t: [] for t in TASKS}
    videos_written = progress(
        list(zip(names, splits)), desc=f"writing the corpus {out.name}", unit="video"
    )
    for i, (name, split) in enumerate(videos_written):
        video = _write_video(out, i, name, split, seed, seconds, pair, realism)
        truths.append(video)
        for task in TASKS:
            if split == "test" and name in tests[task]:
                templates[task] += _template_lines(task, name, video.num_frames)
    for task in TASKS:
        _write_text(out / TEST_LISTS[task], tests[task])
        _write_text(out / TEMPLATES[task], [TEMPLATE_HEADERS[task]] + templates[task])
    return SyntheticCorpus(root=out, seed=seed, videos=tuple(truths))


def default_cache_dir() -> Path:
    """Where the embedded corpus lives: $ABAW_RAY_CACHE, else $XDG_CACHE_HOME/abaw_ray."""
    if os.environ.get("ABAW_RAY_CACHE"):
        return Path(os.environ["ABAW_RAY_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "abaw_ray"


def truth_path(root: Path) -> Path:
    """The generator's record of what it wrote, kept beside (not inside) the corpus."""
    return root.with_name(root.name + ".truth.json")


def ensure_default_corpus(
    videos: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    realistic: bool = False,
) -> Path:
    """The embedded corpus, written once to the cache directory and reused afterwards.

    Written into a temporary folder and renamed into place, so a crash never leaves half a
    corpus where a later run would trust it.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    videos = videos or DEFAULT_VIDEOS[realistic]
    kind = f"realistic-r{REALISM_VERSION}" if realistic else "synthetic"
    root = cache / f"affwild2-{kind}-v{GENERATOR_VERSION}-n{videos}-s{seed}"
    if truth_path(root).is_file() and root.is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache))
    try:
        corpus = generate(tmp / root.name, videos=videos, seed=seed, realistic=realistic)
        record = [asdict(v) for v in corpus.videos]
        try:
            os.replace(tmp / root.name, root)
        except OSError:
            if not root.is_dir():  # a concurrent writer finished first otherwise
                raise
        tmp_truth = truth_path(tmp / root.name)
        tmp_truth.write_text(json.dumps({"seed": seed, "videos": record}, indent=1))
        os.replace(tmp_truth, truth_path(root))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_truth(root: str | Path) -> SyntheticCorpus:
    root = Path(root)
    data = json.loads(truth_path(root).read_text())
    return SyntheticCorpus(root, data["seed"], tuple(SyntheticVideo(**v) for v in data["videos"]))
