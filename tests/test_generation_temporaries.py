# Copyright (c) CaGNet-D2 contributors.
"""A generation of the built-in dataset that was killed leaves temporary folders; the next
generator that holds the dataset's lock removes them (not those of a live process)."""
import subprocess
import sys

from cagnet.data.datasets.register_synthetic_scenes import MINI_GENERATION, ensure_synthetic_scenes
from cagnet.data.register import PREPARED_MARKER


def test_the_next_generator_removes_the_temporaries_of_a_killed_one(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid no longer runs, as after a kill -9
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        root = tmp_path / "scenes"
        stale = [tmp_path / f"scenes.tmp-{dead.pid}",  # renamed into place by generate, not yet to root
                 tmp_path / f".scenes.tmp-{dead.pid}.tmp-k1ll3dxx"]  # generate's own temporary folder
        running = tmp_path / f".scenes.tmp-{alive.pid}.tmp-running"
        unrelated = [tmp_path / ".scenes_other.tmp-1", tmp_path / "scenes-notes"]
        for d in stale + [running] + unrelated:
            (d / "images").mkdir(parents=True)
            (d / "images" / "0.jpg").write_bytes(b"partial")
        ensure_synthetic_scenes(str(root), dict(MINI_GENERATION, num_train=2, num_val=1))
        assert (root / PREPARED_MARKER).is_file()
        assert not any(d.exists() for d in stale)
        assert running.exists() and all(d.exists() for d in unrelated)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [root.name, "scenes.lock", running.name] + [d.name for d in unrelated])
    finally:
        alive.kill()
