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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_and_folders_get_the_umask_mode_not_mkstemps_0600(tmp_path, umask):
    # mkstemp/mkdtemp create 0600/0700: renamed into place as they were, samples, weights and
    # statistics were unreadable to the group sharing a folder whatever the umask.
    import os
    import stat

    import numpy as np

    from pvdm_fast._atomic import current_umask
    from pvdm_fast.sample_job import write_video_outputs
    from pvdm_fast.train.checkpoint import save_checkpoint

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write(tmp_path / "stats.npz", lambda tmp: tmp.write_text("x"))
        video = np.zeros((2, 8, 8, 3), np.uint8)
        write_video_outputs(tmp_path, 0, video, ("npz", "png", "gif"), fps=8.0)
        ckpt = save_checkpoint(tmp_path / "run", 1, {}, {"step": 1})
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    for f in (tmp_path / "stats.npz", tmp_path / "video_000000.npz", tmp_path / "video_000000.gif",
              tmp_path / "video_000000" / "frame_0000.png", ckpt / "state.pt"):
        assert mode(f) == 0o666 & ~umask, f
    for d in (tmp_path / "video_000000", ckpt):
        assert mode(d) == 0o777 & ~umask, d


def test_rewriting_a_file_keeps_its_mode(tmp_path):
    import os
    import stat

    path = tmp_path / "config.json"
    path.write_text("old")
    os.chmod(path, 0o640)
    atomic_write(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640
