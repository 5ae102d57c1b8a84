"""The case database: round trips on both backends, the model check, damaged files, export/import,
resuming after a SIGKILL mid-add, two writer processes, and the command line."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from DeepSimilarityLib.cli import main
from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.retrieval.case_store import AddCancelled, NewCase
from DeepSimilarityLib.retrieval.databases import create_database, open_database, parse_uri
from DeepSimilarityLib.retrieval.encoders import ThumbnailEncoder, load_encoder, save_thumbnail_model

pytest.importorskip("faiss")
ROOT = Path(__file__).resolve().parents[2]


def milvus_available():
    try:
        with warnings.catch_warnings():  # milvus-lite imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import milvus_lite  # noqa: F401
            import pymilvus  # noqa: F401
    except ImportError as exc:
        return f"milvus-lite not installed ({exc}): pip install pymilvus==2.5.18 milvus-lite==2.5.1 'setuptools<81'"
    return None


@pytest.fixture(params=["sqlite", "milvus-lite"])
def uri(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "cases.db")
    reason = milvus_available()
    if reason:
        pytest.skip(reason)
    return f"milvus-lite://{tmp_path / 'cases_milvus.db'}"


def images(n, seed=0, shape=(24, 24)):
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def cases_of(ims, labels=None):
    return [NewCase(f"case{i:04d}", image=im, labels=(labels[i] if labels else [f"L{i % 3}"]), metadata={"i": i})
            for i, im in enumerate(ims)]


def test_round_trip_query_remove_reopen(uri):
    enc = ThumbnailEncoder("binary", 16)
    ims = images(40)
    with create_database(uri, enc.model_id, enc.kind, enc.size) as db:
        report = db.add(cases_of(ims), enc, batch_size=16, progress=False)
        assert len(report.added) == 40 and report.skipped == 0
        matches = db.query_images(ims[5:7], enc, k=3, labels=["L2", "X"])
        assert [m[0].source for m in matches] == ["case0005", "case0006"]
        assert matches[0][0].distance == 0 and matches[0][0].metadata == {"i": 5}
        assert matches[0][0].labels == ["L2"] and matches[0][0].shared_labels == ["L2"]
        assert matches[1][0].shared_labels == []
        d = [m.distance for m in matches[0]]
        assert d == sorted(d) and d[1] > 0
    with open_database(uri) as db:
        assert db.count() == 40 and db.info()["model_id"] == enc.model_id
        assert db.remove(["case0005", "nope"]) == 1
        top = db.query_images(ims[5:6], enc, k=40)[0]
        assert len(top) == 39 and "case0005" not in {m.source for m in top}
        assert db.query(enc.encode(ims[5:6]), k=1, labels=None)[0][0].shared_labels is None


def test_dense_database_uses_euclidean_distance(uri):
    enc = ThumbnailEncoder("dense", 8)
    ims = images(30, seed=1)
    with create_database(uri, enc.model_id, enc.kind, enc.size) as db:
        db.add(cases_of(ims), enc, progress=False)
        codes = enc.encode(ims)
        got = db.query(codes[3], k=5)[0]
        ref = np.linalg.norm(codes - codes[3], axis=1)
        assert got[0].source == "case0003"
        np.testing.assert_allclose([m.distance for m in got], np.sort(ref)[:5], atol=1e-4)


def test_resumed_add_skips_present_sources_and_repeats(uri):
    enc = ThumbnailEncoder("binary", 16)
    ims = images(30)
    with create_database(uri, enc.model_id, enc.kind, enc.size) as db:
        db.add(cases_of(ims)[:12], enc, batch_size=5, progress=False)
        again = cases_of(ims) + cases_of(ims)[:3]  # a source repeated within one input is added once
        report = db.add(again, enc, batch_size=7, progress=False)
        assert len(report.added) == 18 and report.skipped == 15 and db.count() == 30
        assert report.added == [f"case{i:04d}" for i in range(12, 30)]


def test_model_mismatch_is_refused(tmp_path, uri):
    sign, dense, sign8 = ThumbnailEncoder("binary", 16), ThumbnailEncoder("dense", 16), ThumbnailEncoder("binary", 8)
    with create_database(uri, sign.model_id, sign.kind, sign.size) as db:
        for other in (dense, sign8):
            with pytest.raises(InputError, match="refusing codes of model"):
                db.add(cases_of(images(2)), other, progress=False)
        with pytest.raises(InputError, match="refusing codes of model 'other'"):
            db.add_codes(["a"], np.zeros((1, 32), np.uint8), model_id="other")
        with pytest.raises(InputError, match=r"shape \(N, 32\)"):
            db.add_codes(["a"], np.zeros((1, 8), np.uint8), model_id=sign.model_id)
        with pytest.raises(InputError, match="refusing"):
            db.query_images(images(1), dense)
        with pytest.raises(InputError, match="need the model_id"):
            db.add([NewCase("a", code=np.zeros(32, np.uint8))], progress=False)
        assert db.count() == 0
    other = create_database(tmp_path / "other.db", sign8.model_id, sign8.kind, sign8.size)
    other.add(cases_of(images(3)), sign8, progress=False)
    other.export(tmp_path / "other.npz")
    with open_database(uri) as db, pytest.raises(InputError, match="refusing"):
        db.import_file(tmp_path / "other.npz")


def test_missing_corrupt_and_foreign_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="none.db: case database not found"):
        open_database(tmp_path / "none.db")
    assert not (tmp_path / "none.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(InputError, match="junk.db: not a case database"):
        open_database(junk)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE t (x)")
    with pytest.raises(InputError, match="foreign.db: not a case database"):
        open_database(foreign)
    enc = ThumbnailEncoder()
    good = tmp_path / "good.db"
    create_database(good, enc.model_id, enc.kind, enc.size).close()
    with sqlite3.connect(good) as c:
        c.execute("UPDATE info SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(InputError, match="good.db: case database schema '99'"):
        open_database(good)
    damaged = tmp_path / "damaged.db"
    db = create_database(damaged, enc.model_id, enc.kind, enc.size)
    db.add(cases_of(images(200)), enc, progress=False)
    db.close()
    data = bytearray(damaged.read_bytes())
    data[4096:len(data)] = b"\xff" * (len(data) - 4096)  # every page after the first overwritten
    damaged.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged.db: not a case database or damaged"):
        open_database(damaged).query_images(images(1), enc)
    with pytest.raises(InputError, match="already exists"):
        create_database(good, enc.model_id, enc.kind, enc.size)
    with pytest.raises(InputError, match="unknown database scheme"):
        parse_uri("postgres://x/y")


def test_export_import_round_trip(tmp_path, uri):
    enc = ThumbnailEncoder("binary", 16)
    ims = images(25)
    src = create_database(tmp_path / "src.db", enc.model_id, enc.kind, enc.size)
    src.add(cases_of(ims), enc, progress=False)
    info = src.export(tmp_path / "cases.npz")
    assert info["cases"] == 25 and not list(tmp_path.glob(".cases.npz*"))  # no temporary file left
    with create_database(uri, enc.model_id, enc.kind, enc.size) as dst:
        assert len(dst.import_file(tmp_path / "cases.npz").added) == 25
        assert dst.import_file(tmp_path / "cases.npz").skipped == 25
        dst.export(tmp_path / "back.npz")
    with np.load(tmp_path / "cases.npz") as a, np.load(tmp_path / "back.npz") as b:
        rec_a, rec_b = (json.loads(x["records"].tobytes()) for x in (a, b))
        order_a, order_b = np.argsort([r[0] for r in rec_a]), np.argsort([r[0] for r in rec_b])
        np.testing.assert_array_equal(a["codes"][order_a], b["codes"][order_b])
        assert [rec_a[i] for i in order_a] == [rec_b[i] for i in order_b]
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InputError, match="bad.npz: not a case database export"):
        src.import_file(tmp_path / "bad.npz")


def test_cancel_reports_what_was_committed_and_resume_completes(tmp_path):
    enc = ThumbnailEncoder()
    ims = images(50)
    db = create_database(tmp_path / "c.db", enc.model_id, enc.kind, enc.size)
    polls = []
    with pytest.raises(AddCancelled) as stop:
        db.add(cases_of(ims), enc, batch_size=10, progress=False, should_stop=lambda: polls.append(1) or len(polls) > 3)
    assert len(stop.value.report.added) == 30 and db.count() == 30
    assert len(db.add(cases_of(ims), enc, batch_size=10, progress=False).added) == 20 and db.count() == 50


def test_index_follows_another_connections_adds_and_removals(tmp_path):
    enc = ThumbnailEncoder()
    ims = images(30)
    a = create_database(tmp_path / "c.db", enc.model_id, enc.kind, enc.size)
    a.add(cases_of(ims)[:10], enc, progress=False)
    assert a.query_images(ims[20:21], enc, k=1)[0][0].source != "case0020"  # index built now
    b = open_database(tmp_path / "c.db")
    b.add(cases_of(ims)[10:30], enc, progress=False)
    assert a.query_images(ims[20:21], enc, k=1)[0][0].source == "case0020"
    a.add(cases_of(ims)[:10], enc, progress=False)  # own add while b's rows were read: nothing lost or doubled
    assert len(a.index()) == 30
    b.remove(["case0020"])
    assert a.query_images(ims[20:21], enc, k=1)[0][0].source != "case0020" and len(a.index()) == 29


# -- separate processes: SIGKILL mid-add and two writers at once -------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from DeepSimilarityLib.retrieval.case_store import NewCase
    from DeepSimilarityLib.retrieval.databases import open_database
    from DeepSimilarityLib.retrieval.encoders import ThumbnailEncoder

    path, start, stop, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

    class SlowEncoder(ThumbnailEncoder):
        def encode(self, images):
            print("encoding", flush=True)
            time.sleep(delay)  # a real model takes a while: the kill lands while a batch is in flight
            return super().encode(images)

    def image(i):
        return np.random.default_rng(i).random((24, 24)).astype(np.float32)

    cases = (NewCase(f"case{i:04d}", image=image(i), labels=[f"L{i % 3}"]) for i in range(start, stop))
    db = open_database(path)
    print(db.add(cases, SlowEncoder(), batch_size=10, progress=False), flush=True)
""")


def expected_code(i):
    return ThumbnailEncoder().encode(np.random.default_rng(i).random((1, 24, 24)).astype(np.float32))[0]


def run_writer(path, start, stop, delay):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(start), str(stop), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def check_consistent(path, n):
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = c.execute("SELECT source, code FROM cases").fetchall()
    assert len(rows) == n and len({s for s, _ in rows}) == n
    for source, code in rows:
        np.testing.assert_array_equal(np.frombuffer(code, np.uint8), expected_code(int(source[4:])))


@pytest.mark.parametrize("delay, total", [(0.05, 200), (0.0, 1000)], ids=["kill-while-encoding", "kill-anywhere"])
def test_sigkill_mid_add_leaves_a_valid_database_and_resume_completes(tmp_path, delay, total):
    enc = ThumbnailEncoder()
    path = tmp_path / "c.db"
    create_database(path, enc.model_id, enc.kind, enc.size).close()
    proc = run_writer(path, 0, total, delay)
    # slow encoder: three batches commit, the kill lands while the fourth is encoded;
    # no delay: the kill lands wherever the writer is (encoding, inserting, committing)
    for _ in range(4):
        assert proc.stdout.readline().startswith("encoding")
    time.sleep(delay / 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    with open_database(path) as db:
        n = db.count()
    assert 30 <= n < total and n % 10 == 0  # whole batches only
    check_consistent(path, n)
    proc = run_writer(path, 0, total, 0.0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"{total - n} cases added, {n} already present" in out
    check_consistent(path, total)


def test_two_writer_processes_at_once(tmp_path):
    enc = ThumbnailEncoder()
    path = tmp_path / "c.db"
    create_database(path, enc.model_id, enc.kind, enc.size).close()
    procs = [run_writer(path, 0, 150, 0.005), run_writer(path, 100, 250, 0.005)]  # 50 sources overlap
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-500:] for r in results]
    added = [int(out.split(" cases added")[0].split()[-1]) for out, _ in results]
    assert sum(added) == 250  # each overlapping source counted by exactly one writer
    check_consistent(path, 250)


# -- the command line ----------------------------------------------------------------------------

@pytest.fixture
def image_folder(tmp_path):
    import SimpleITK as sitk

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["image,labels,patient"]
    for i in range(12):
        sitk.WriteImage(sitk.GetImageFromArray((rng.random((32, 32)) * 255).astype(np.uint8)), str(folder / f"im{i:02d}.png"))
        rows.append(f"im{i:02d}.png,{['Mass|Nodule', 'Mass', 'No Finding'][i % 3]},P{i // 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_cli_end_to_end(tmp_path, image_folder, capsys):
    model = save_thumbnail_model(tmp_path / "model.json")
    db, db2 = tmp_path / "c.db", tmp_path / "d.db"
    assert main(["index", "create", "--db", str(db), "--model", str(model)]) == 0
    assert main(["index", "add", "--db", str(db), "--folder", str(image_folder), "--labels",
                 str(tmp_path / "labels.csv"), "--batch-size", "5"]) == 0
    assert "12 cases added, 0 already present" in capsys.readouterr().out
    assert main(["index", "add", "--db", str(db), str(image_folder / "im00.png")]) == 0
    assert "0 cases added, 1 already present" in capsys.readouterr().out
    assert main(["index", "info", "--db", str(db), "--out-json", str(tmp_path / "info.json")]) == 0
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["cases"] == 12 and info["labels"] == {"Mass": 8, "Nodule": 4}
    assert main(["query", "--db", str(db), "--image", str(image_folder / "im03.png"), "--k", "3", "--labels", "Mass",
                 "--out-json", str(tmp_path / "q.json")]) == 0
    q = json.loads((tmp_path / "q.json").read_text())
    assert q["matches"][0]["source"].endswith("im03.png") and q["matches"][0]["shared_labels"] == ["Mass"]
    assert q["matches"][0]["metadata"] == {"patient": "P1"}
    assert main(["index", "export", "--db", str(db), "--out", str(tmp_path / "e.npz")]) == 0
    assert main(["index", "import", "--db", str(db2), "--file", str(tmp_path / "e.npz")]) == 0
    assert main(["index", "remove", "--db", str(db2), str((image_folder / "im03.png").resolve())]) == 0
    assert "removed 1 of 1" in capsys.readouterr().out
    assert main(["query", "--db", str(db2), "--image", str(image_folder / "im03.png"), "--k", "1"]) == 0
    assert "im03.png" not in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize("new", [["index", "remove"], ["index", "export"], ["index", "import"]], ids=" ".join)
def test_cli_new_actions_have_help(new, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(new + ["--help"])
    assert exit_.value.code == 0 and "usage: deepsim" in capsys.readouterr().out


def test_cli_bad_inputs_exit_2(tmp_path, image_folder, capsys):
    db = tmp_path / "c.db"
    assert main(["index", "create", "--db", str(db), "--model", "thumbnail-sign"]) == 0
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"garbage" * 100)
    im = str(image_folder / "im00.png")
    cases = [
        (["query", "--db", str(tmp_path / "none.db"), "--image", im], "case database not found"),
        (["query", "--db", str(junk), "--image", im], "not a case database"),
        (["query", "--db", str(db), "--image", str(tmp_path / "none.png")], "file not found"),
        (["query", "--db", str(db), "--image", im, "--k", "0"], "--k"),
        (["query", "--db", str(db), "--image", im, "--model", "thumbnail-dense"], "refusing codes"),
        (["index", "create", "--db", str(db), "--model", "thumbnail-sign"], "already exists"),
        (["index", "create", "--db", str(tmp_path / "x.db"), "--model", str(tmp_path / "none.pt")], "model file not found"),
        (["index", "add", "--db", str(db)], "give image files or --folder"),
        (["index", "add", "--db", str(db), "--folder", str(image_folder), "--labels", str(tmp_path / "no.csv")], "labels file not found"),
        (["index", "import", "--db", str(db), "--file", str(tmp_path / "none.npz")], "file not found"),
        (["index", "info", "--db", "postgres://h/x"], "unknown database scheme"),
    ]
    for args, message in cases:
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2, args
        assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err, (args, err)
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "x.db").exists()


def test_cli_add_stopped_by_a_bad_image_says_what_was_committed(tmp_path, image_folder, capsys):
    (image_folder / "zz_broken.png").write_bytes(b"\x89PNG broken")
    db = tmp_path / "c.db"
    assert main(["index", "create", "--db", str(db), "--model", "thumbnail-sign"]) == 0
    assert main(["index", "add", "--db", str(db), "--folder", str(image_folder), "--batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert "zz_broken.png: cannot read image" in err and "12 cases added, 0 already present before it" in err
    with open_database(db) as d:
        assert d.count() == 12


def test_add_folder_with_labels_csv(tmp_path, image_folder):
    enc = ThumbnailEncoder()
    with create_database(tmp_path / "c.db", enc.model_id, enc.kind, enc.size) as db:
        report = db.add_folder(image_folder, enc, tmp_path / "labels.csv", progress=False)
        assert len(report.added) == 12
        m = db.query_images([image_folder / "im04.png"], enc, k=1, labels=["Mass", "Effusion"])[0][0]
        assert Path(m.source) == (image_folder / "im04.png").resolve() and m.labels == ["Mass"]
        assert m.shared_labels == ["Mass"] and m.metadata == {"patient": "P2"}
        assert db.add_folder(image_folder, enc, progress=False).skipped == 12


def test_load_encoder_dispatches_on_format(tmp_path):
    assert load_encoder(save_thumbnail_model(tmp_path / "m.json", "dense", 8)).model_id == "thumbnail-dense-8x8-v1"
    (tmp_path / "odd.json").write_text('{"format": "nope"}')
    with pytest.raises(InputError, match="unknown model format 'nope'"):
        load_encoder(tmp_path / "odd.json")
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="bad.pt: not a readable model file"):
        load_encoder(tmp_path / "bad.pt")
