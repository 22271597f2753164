"""Small real videos in the containers and codecs the public datasets ship, written with PyAV:
UCF101 and HMDB51 (.avi, MPEG-4 part 2), Something-Something v2 (.webm, VP9), Kinetics (.mp4,
H.264; some .mkv). Each shows a bright bar moving right or left over a dark textured frame.

PyAV's VP9 encoder fails to open in a process that has loaded decord (whose bundled FFmpeg
comes first), so `write_clips` writes them in a fresh process."""
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np

FORMATS = {"avi": "mpeg4", "webm": "libvpx-vp9", "mp4": "libx264", "mkv": "libx264"}


def moving_bar(path: Path, direction: int, frames: int = 24, width: int = 64, height: int = 48,
               seed: int = 0) -> Path:
    """Write a clip whose bar moves `direction` (+1 right, -1 left) 1 px per frame."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(FORMATS[path.suffix.lstrip(".")], rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            image = background.copy()
            left = width // 2 - 4 + direction * (t - frames // 2)
            image[:, left:left + 8] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def bar_column(frame: np.ndarray) -> float:
    """Where the bar is in a decoded frame (H, W, 3) or (3, H, W): the centre of its bright columns."""
    pixels = frame if frame.shape[-1] == 3 else frame.transpose(1, 2, 0)
    brightness = pixels.mean(axis=(0, 2))
    bright = np.flatnonzero(brightness > (brightness.max() + brightness.min()) / 2)
    return float(bright.mean())


def write_clips(clips: dict[Path, int]) -> None:
    """moving_bar(path, direction) for each item, in a fresh Python process (see above)."""
    jobs = json.dumps({str(path): direction for path, direction in clips.items()})
    subprocess.run([sys.executable, __file__, jobs], check=True)


if __name__ == "__main__":
    for path, direction in json.loads(sys.argv[1]).items():
        moving_bar(Path(path), direction)
