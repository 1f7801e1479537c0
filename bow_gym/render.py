"""Drawing episodes: image, mask overlay, clicks and the expert's answers."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

FG_COLOUR = (40, 220, 60)
BG_COLOUR = (235, 50, 50)
GT_COLOUR = (255, 220, 0)


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
    banner_h = 18 if w * scale < 300 else 24
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
