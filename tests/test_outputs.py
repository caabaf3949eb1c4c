"""All-or-nothing files: two writers of one file (two trials caching the same dense logits) do
not move each other's temporary file away."""

from nxmiformer.outputs import atomic_file


def test_two_writers_of_one_file_both_finish(tmp_path):
    path = tmp_path / "logits.npy"
    with atomic_file(path) as first, atomic_file(path) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_bytes(b"first")
        second.write_bytes(b"second")
    assert path.read_bytes() == b"first"  # the outer block finished last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logits.npy"]  # no temporary file left


def test_a_failed_block_leaves_nothing(tmp_path):
    path = tmp_path / "out.json"
    try:
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []
