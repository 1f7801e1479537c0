"""Drawing episodes: image, mask overlay, clicks and the expert's answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

FG_COLOUR = (40, 220, 60)
BG_COLOUR = (235, 50, 50)
GT_COLOUR = (255, 220, 0)


def banner_height(width: int) -> int:
    """Height in pixels of the text banner :func:`render_frame` puts above a frame this wide."""
    return 18 if width < 300 else 24


def render_frame(
    image: np.ndarray,
    mask: np.ndarray,
    clicks: Sequence[tuple[int, int, int, int, bool]] = (),
    *,
    title: str = "",
    ground_truth: np.ndarray | None = None,
    scale: int = 3,
) -> np.ndarray:
    """An RGB frame of one state of an episode.

    Args:
        image: ``(H, W, 3)`` uint8 RGB at working resolution.
        mask: ``(H, W)`` bool current mask (green fill and outline).
        clicks: ``(y, x, label, answer, accepted)`` per click so far: a green dot for foreground,
            red for background; a white ring when the expert said "better", none when "worse";
            the last click's answer is written in the banner.
        title: Text of the top banner.
        ground_truth: Optional ``(H, W)`` bool mask drawn as a yellow outline (evaluation views).
        scale: Integer enlargement, so dots and text stay legible.

    Returns:
        ``(scale * H + banner, scale * W, 3)`` uint8 RGB.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = mask.shape
    big = cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    m = cv2.resize(mask.astype(np.uint8), (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    frame = big.astype(np.float32)
    frame[m > 0] = 0.6 * frame[m > 0] + 0.4 * np.array(FG_COLOUR, np.float32)
    frame = frame.astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(frame, contours, -1, FG_COLOUR, 1, cv2.LINE_AA)
    if ground_truth is not None:
        g = cv2.resize(ground_truth.astype(np.uint8), (w * scale, h * scale),
                       interpolation=cv2.INTER_NEAREST)
        gc, _ = cv2.findContours(g, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(frame, gc, -1, GT_COLOUR, 1, cv2.LINE_AA)
    radius = max(2, 2 * scale)
    for y, x, label, answer, _accepted in clicks:
        centre = (int(x * scale + scale // 2), int(y * scale + scale // 2))
        cv2.circle(frame, centre, radius, FG_COLOUR if label else BG_COLOUR, -1, cv2.LINE_AA)
        if answer > 0:
            cv2.circle(frame, centre, radius + 2, (255, 255, 255), 1, cv2.LINE_AA)
    banner_h = banner_height(w * scale)
    banner = np.full((banner_h, w * scale, 3), 30, np.uint8)
    font_scale = banner_h / 40
    cv2.putText(banner, title, (4, banner_h - 6), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                (230, 230, 230), 1, cv2.LINE_AA)
    if clicks:
        answer = clicks[-1][3]
        text, colour = ("better", FG_COLOUR) if answer > 0 else ("worse", BG_COLOUR)
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale * 1.2, 2)
        cv2.putText(banner, text, (w * scale - tw - 4, banner_h - 6), cv2.FONT_HERSHEY_SIMPLEX,
                    font_scale * 1.2, colour, 2, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([banner, frame], axis=0))


def show_human(frame: np.ndarray, figure=None, fps: float = 2.0):
    """Show a frame in a matplotlib window (``render_mode="human"``); returns the figure."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("render_mode='human' needs matplotlib: pip install matplotlib") from e
    if figure is None or not plt.fignum_exists(figure.number):
        plt.ion()
        figure = plt.figure("bow-gym")
        figure.add_subplot(1, 1, 1).axis("off")
    ax = figure.axes[0]
    if ax.images:
        ax.images[0].set_data(frame)
    else:
        ax.imshow(frame)
    figure.canvas.draw_idle()
    plt.pause(1.0 / fps)
    return figure


def frame_grid(frames: Sequence[np.ndarray], columns: int, pad: int = 4) -> np.ndarray:
    """Tile equally-sized-or-smaller RGB frames into one image (for episode figures)."""
    if not frames:
        raise ValueError("frame_grid needs at least one frame")
    fh = max(f.shape[0] for f in frames)
    fw = max(f.shape[1] for f in frames)
    rows = (len(frames) + columns - 1) // columns
    out = np.full((rows * (fh + pad) + pad, columns * (fw + pad) + pad, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, columns)
        y, x = pad + r * (fh + pad), pad + c * (fw + pad)
        out[y : y + f.shape[0], x : x + f.shape[1]] = f
    return out


@dataclass
class EpisodeRow:
    """One row of :func:`episodes_figure`: an episode of one policy on one image.

    Attributes:
        policy: The policy's label, written at the left of the row.
        image_id: The image, written under the policy.
        frames: :func:`render_frame` frames, the start then one per click (banner included).
        dice: Dice of each frame's mask (evaluation only), the start's first.
        answers: The expert's answer to each click (+1 "better", -1 "worse").
    """

    policy: str
    image_id: str
    frames: Sequence[np.ndarray]
    dice: Sequence[float]
    answers: Sequence[float] = field(default_factory=list)


_TEXT = (30, 30, 30)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(canvas: np.ndarray, text: str, x: int, y: int, scale: float = 0.45,
          colour: tuple[int, int, int] = _TEXT, thickness: int = 1) -> int:
    """Write ``text`` with its baseline at ``y``; returns the x after it."""
    cv2.putText(canvas, text, (x, y), _FONT, scale, colour, thickness, cv2.LINE_AA)
    return x + cv2.getTextSize(text, _FONT, scale, thickness)[0][0]


def _legend(canvas: np.ndarray, y: int, x: int) -> None:
    """The key to the marks :func:`render_frame` draws, in one line at baseline ``y``."""
    def swatch_fill(x0: int) -> int:
        cv2.rectangle(canvas, (x0, y - 10), (x0 + 14, y + 2), FG_COLOUR, -1)
        return x0 + 20

    def dot(colour: tuple[int, int, int], ring: bool = False) -> Callable[[int], int]:
        def draw(x0: int) -> int:
            cv2.circle(canvas, (x0 + 7, y - 4), 5, colour, -1, cv2.LINE_AA)
            if ring:
                cv2.circle(canvas, (x0 + 7, y - 4), 7, (255, 255, 255), 1, cv2.LINE_AA)
            return x0 + 20

        return draw

    def line(x0: int) -> int:
        cv2.line(canvas, (x0, y - 4), (x0 + 14, y - 4), GT_COLOUR, 2, cv2.LINE_AA)
        return x0 + 20

    def ring_on_dark(x0: int) -> int:
        cv2.rectangle(canvas, (x0, y - 13), (x0 + 16, y + 5), (60, 60, 60), -1)
        cv2.circle(canvas, (x0 + 8, y - 4), 7, (255, 255, 255), 1, cv2.LINE_AA)
        return x0 + 22

    items = [(swatch_fill, "mask"), (dot(FG_COLOUR), "foreground click"),
             (dot(BG_COLOUR), "background click"), (ring_on_dark, 'answered "better"'),
             (line, "ground truth (evaluation only)")]
    for draw, label in items:
        x = _text(canvas, label, draw(x), y) + 18


def episodes_figure(rows: Sequence[EpisodeRow], *, title: str = "", panel: int = 150,
                    label_width: int = 170, pad: int = 6) -> np.ndarray:
    """Episodes side by side: one row per (image, policy), one column per click.

    Each row says which policy clicked on which image; each panel shows the mask after that
    click with its Dice (against the ground truth, evaluation only) and the expert's answer
    under it; a legend at the top explains the marks. Frames are scaled to ``panel`` pixels
    (area averaging) so the figure stays small enough to open quickly and to commit.

    Args:
        rows: The episodes, drawn top to bottom; rows with the same ``image_id`` in a row are
            grouped by a wider gap.
        title: First line of the figure.
        panel: Width of one frame in pixels.
        label_width: Width of the left column of row labels.
        pad: Gap between panels in pixels.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    if not rows:
        raise ValueError("episodes_figure needs at least one row")
    columns = max(len(r.frames) for r in rows)
    for r in rows:
        if len(r.dice) != len(r.frames):
            raise ValueError(f"row {r.policy}/{r.image_id}: {len(r.frames)} frames but "
                             f"{len(r.dice)} Dice values")
    fh, fw = rows[0].frames[0].shape[:2]
    body = fh - banner_height(fw) if fh > fw else fh
    panel_h = round(panel * body / fw)
    caption = 18
    header = (26 if title else 0) + 28 + 22
    group_gap = 3 * pad
    groups = sum(1 for i, r in enumerate(rows) if i and r.image_id != rows[i - 1].image_id)
    height = header + len(rows) * (panel_h + caption + pad) + groups * group_gap + pad
    width = label_width + columns * (panel + pad) + pad
    canvas = np.full((height, width, 3), 255, np.uint8)
    y = 0
    if title:
        _text(canvas, title, pad, 20, 0.55, thickness=1)
        y = 26
    _legend(canvas, y + 20, pad)
    y += 28
    for c in range(columns):
        x = label_width + c * (panel + pad)
        _text(canvas, "start" if c == 0 else f"click {c}", x + 2, y + 15, 0.5)
    y += 22
    for i, r in enumerate(rows):
        if i and r.image_id != rows[i - 1].image_id:
            cv2.line(canvas, (pad, y + group_gap // 2), (width - pad, y + group_gap // 2),
                     (200, 200, 200), 1)
            y += group_gap
        _text(canvas, r.policy, pad, y + 18, 0.5, thickness=1)
        _text(canvas, r.image_id, pad, y + 38, 0.4, (90, 90, 90))
        _text(canvas, f"Dice {r.dice[0]:.2f} -> {r.dice[-1]:.2f}", pad, y + 58, 0.4, (90, 90, 90))
        for c, frame in enumerate(r.frames):
            x = label_width + c * (panel + pad)
            image = cv2.resize(np.ascontiguousarray(frame[fh - body:]), (panel, panel_h),
                               interpolation=cv2.INTER_AREA)
            canvas[y : y + panel_h, x : x + panel] = image
            cy = y + panel_h + caption - 5
            after = _text(canvas, f"Dice {r.dice[c]:.2f}", x + 2, cy, 0.42)
            if c >= 1 and c - 1 < len(r.answers):
                better = r.answers[c - 1] > 0
                _text(canvas, "better" if better else "worse", after + 8, cy, 0.42,
                      (20, 150, 40) if better else (200, 40, 40))
        y += panel_h + caption + pad
    return canvas


def write_png(path, image: np.ndarray, colours: int = 256) -> None:
    """Write an RGB figure as a palette PNG (``colours`` colours), atomically.

    A figure of rendered episodes is mostly flat colour and a few image textures: 256 colours
    keep it readable at a third of the bytes of a truecolour PNG.
    """
    import io

    from PIL import Image

    from bow_gym.io_utils import atomic_write_bytes

    buffer = io.BytesIO()
    Image.fromarray(image).quantize(colors=colours, method=Image.Quantize.MEDIANCUT,
                                    dither=Image.Dither.NONE).save(buffer, "PNG", optimize=True)
    atomic_write_bytes(path, buffer.getvalue())
