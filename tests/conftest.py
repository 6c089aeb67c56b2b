import sys
from pathlib import Path

import numpy as np
import pytest

# tests/helpers.py is imported as a plain module by the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder of real PNG/JPEG files, a text file and a corrupt JPEG."""
    pytest.importorskip("PIL", reason="Pillow is not installed (pip install pillow)")
    from PIL import Image

    rng = np.random.default_rng(5)
    # Random colour noise at a few scales, upsampled: smooth, photo-like structure for PDQ to hash.
    pictures = []
    for _ in range(2):
        rgb = np.zeros((120, 160, 3))
        for size, weight in ((4, 1.0), (8, 0.6), (16, 0.3)):
            small = Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))
            rgb += weight * np.asarray(small.resize((160, 120), Image.BICUBIC), dtype=np.float64)
        pictures.append(((rgb - rgb.min()) / np.ptp(rgb) * 255).astype(np.uint8))
    tmp_path = tmp_path / "images"  # a folder of its own: other files of the test stay out of it
    (tmp_path / "sub").mkdir(parents=True)
    Image.fromarray(pictures[0]).save(tmp_path / "one.png")
    Image.fromarray(pictures[0]).save(tmp_path / "sub" / "one_again.png")
    Image.fromarray(pictures[0]).save(tmp_path / "sub" / "one.jpg", quality=85)
    Image.fromarray(pictures[1]).save(tmp_path / "two.png")
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 20)
    return tmp_path


@pytest.fixture
def pdq() -> None:
    pytest.importorskip("pdqhash", reason="pdqhash is not installed (pip install pdqhash)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Destroy the Kafka clients the tests left behind while the interpreter is still whole.

    librdkafka clients (producers and admin clients have no close()) are otherwise destroyed
    during interpreter shutdown, where their log and delivery callbacks can no longer reach Python;
    one CI run here ended, after every test had been reported, in a segmentation fault of the test
    process (the cause was not pinned down)."""
    import gc

    gc.collect()
