"""The one atomic-write helper every writer of weights, caches, stats, checkpoints and videos uses."""
import pytest

from pvdm_fast._atomic import atomic_write


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "stats.npz"
    atomic_write(path, lambda tmp: tmp.write_text("first"))
    assert path.read_text() == "first"

    def crash(tmp):
        tmp.write_text("half of the second")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, crash)
    assert path.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.npz"]


def test_keep_suffix_gives_the_writer_a_name_with_the_target_suffix(tmp_path):
    seen = []
    atomic_write(tmp_path / "clip.mp4", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"x")), keep_suffix=True)
    assert seen[0].suffix == ".mp4" and seen[0].parent == tmp_path and seen[0] != tmp_path / "clip.mp4"
    assert (tmp_path / "clip.mp4").read_bytes() == b"x"
