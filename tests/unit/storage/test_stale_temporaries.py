"""The temporaries of killed writers are removed by the next write into their folder; a live writer's
never are, however old, nor one just created."""

from __future__ import annotations

from freestack.storage import join, remove_stale_temporaries, to_path, write_bytes
from freestack.storage.objects import STALE_AFTER_S, TMP_MARK
from tests.support.writers import age, kill, temporaries, writing


def test_the_next_write_into_a_folder_removes_a_killed_writers_temporary_only(tmp_path):
    folder = tmp_path / "lake" / "events" / "ds=2026-11-03"
    folder.mkdir(parents=True)
    killed = writing(f"file://{folder}/part.parquet", 1 << 20)
    live = writing(f"file://{folder}/other.parquet", 1 << 10)
    try:
        kill(killed)
        live_tmp, dead_tmp = temporaries(folder)  # by name: .other..., .part...
        assert dead_tmp.name.startswith(".part.parquet") and live_tmp.name.startswith(".other.parquet")
        young = folder / f".young.bin{TMP_MARK}0123456789abcdef"  # a writer between creating and locking it
        young.write_bytes(b"y")
        deeper = folder / "sub" / f".deep.bin{TMP_MARK}fedcba9876543210"  # not in the folder written
        deeper.parent.mkdir()
        deeper.write_bytes(b"d")
        for p in (dead_tmp, live_tmp, deeper):
            age(p, STALE_AFTER_S * 10)

        write_bytes(
            join(to_path(tmp_path.as_uri()), "lake", "events", "ds=2026-11-03", "_manifest.json"), b"{}"
        )

        assert not dead_tmp.exists(), "the killed writer's temporary was left"
        assert live_tmp.exists() and young.exists() and deeper.exists()
        assert (folder / "_manifest.json").read_bytes() == b"{}"
    finally:
        kill(live)
    # its writer gone, the live writer's temporary is stale now too
    assert remove_stale_temporaries(str(folder)) == (1, 1 << 10)
    assert temporaries(folder) == [young]


def test_a_writer_in_this_process_keeps_its_temporary_from_a_sweep_of_its_folder(tmp_path):
    from freestack.storage import AtomicWriter

    target = join(to_path(tmp_path.as_uri()), "a.bin")
    with AtomicWriter(target) as w:
        w.write(b"a" * 100)
        w.flush()
        (tmp,) = temporaries(tmp_path)
        age(tmp, STALE_AFTER_S * 10)
        assert remove_stale_temporaries(str(tmp_path)) == (0, 0)
        write_bytes(join(to_path(tmp_path.as_uri()), "b.bin"), b"b")  # another writer into the same folder
    assert (tmp_path / "a.bin").read_bytes() == b"a" * 100
    assert temporaries(tmp_path) == []


def test_the_data_api_sweep_spares_an_old_temporary_its_writer_still_holds(tmp_path):
    """The service's age rule removes what nobody has written to for ``max_age``, but never a temporary
    a live writer holds (a pipeline task writing slowly into the service's folder)."""
    from freestack.dataapi.temporaries import sweep

    folder = tmp_path / "alice" / "models"
    folder.mkdir(parents=True)
    live, killed = writing(f"file://{folder}/slow.bin", 10), writing(f"file://{folder}/gone.bin", 10)
    try:
        kill(killed)
        for p in temporaries(folder):
            age(p, 3600)
        assert sweep(str(tmp_path), max_age=600) == (1, 10)
        assert [p.name.split(TMP_MARK)[0] for p in temporaries(folder)] == [".slow.bin"]
    finally:
        kill(live)
