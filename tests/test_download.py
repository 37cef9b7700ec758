"""incseg download, against a loopback HTTP server (127.0.0.1 only) serving small archives in
the official layouts: VOC's tar, SBD's tgz with .mat masks, ADE's zip, COCO's zips. No test
reaches the internet: every download goes through --mirror (or $INCSEG_MIRROR) to the server.
The published checksums belong to the real archives, so each test records its own archives'
checksums in the source table (monkeypatched), in the published algorithm."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from incseg_cli.downloads import sources, transfer
from incseg_cli.stages import download as stage

SERVER_LIFETIME_S = 120  # the server stops by itself after this, whatever the test does


class Server:
    """Serves ``files`` (name -> bytes) with HEAD, GET and Range; ``drop[name] = [n, ...]``
    cuts the next GETs of ``name`` after n bytes of the body (one entry per GET)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, name, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _head(self, send_body: bool) -> None:
                name = self.path.lstrip("/")
                server.requests.append((self.command, name, self.headers.get("Range")))
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if not send_body:
                    return
                cut = server.drop.get(name)
                if cut:
                    n = cut.pop(0)
                    self.wfile.write(body[start:start + n])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def do_HEAD(self):
                self._head(False)

            def do_GET(self):
                self._head(True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.timer = threading.Timer(SERVER_LIFETIME_S, self.httpd.shutdown)
        self.timer.daemon = True

    def gets(self, name: str | None = None) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET" and (name is None or r[1] == name)]


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    s.timer.start()
    yield s
    s.timer.cancel()
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def serve(server, monkeypatch, tmp_path):
    """``serve(name, {filename: bytes})``: the files on the server, their checksums in the
    source table (the published algorithm; none stays none). Fast retries, a private
    torch cache, and $INCSEG_MIRROR pointing at the server."""
    monkeypatch.setattr(transfer, "BACKOFF_S", 0.01)
    monkeypatch.setattr(transfer, "CHUNK", 256)  # blocks smaller than the cuts, as on a real file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv(sources.MIRROR_ENV, server.url)

    def install(name: str, files: dict[str, bytes], checksums: bool = True) -> None:
        source = sources.SOURCES[name]
        archives = []
        for archive in source.archives:
            body = files[archive.filename]
            server.files[archive.filename] = body
            checksum = archive.checksum
            if checksums and checksum is not None:
                alg = checksum.split(":")[0]
                digest = hashlib.sha256(body).hexdigest()[:8] if alg == "sha256-prefix" else \
                    hashlib.new(alg, body).hexdigest()
                checksum = f"{alg}:{digest}"
            archives.append(dataclasses.replace(archive, checksum=checksum))
        monkeypatch.setitem(sources.SOURCES, name, dataclasses.replace(source, archives=tuple(archives)))

    return install


# -- archives in the official layouts -------------------------------------------------------------
def _tar(entries: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _png(mask: np.ndarray, mode: str = "P") -> bytes:
    from incseg_cli.datasets.base import bit_palette

    buf = io.BytesIO()
    image = Image.frombytes(mode, (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask, np.uint8).tobytes())
    if mode == "P":  # without a palette PIL would save fewer bits than the labels need
        image.putpalette(bit_palette().reshape(-1).tolist())
    image.save(buf, format="PNG")
    return buf.getvalue()


def _jpg(size: int = 16, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _mat(mask: np.ndarray) -> bytes:
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, {"GTcls": {"Segmentation": mask.astype(np.uint8), "Boundaries": np.zeros((1, 20), object),
                            "CategoriesPresent": np.unique(mask[mask > 0]).astype(np.uint8)}})
    return buf.getvalue()


def _bordered(mask: np.ndarray) -> np.ndarray:
    """VOC's masks have void (255) borders, SBD's do not: the way to tell whose a mask is."""
    out = mask.copy()
    out[0, :] = 255
    return out


@pytest.fixture(scope="module")
def voc_archives(tmp_path_factory) -> dict:
    """VOC's tar and SBD's tgz made from the toy dataset: VOC annotates 40 train ids (20 also
    in SBD) and the val ids; SBD the other train ids and, in its val list, two VOC val ids."""
    from incseg_cli.data.toy import build_toy_dataset

    toy = build_toy_dataset(tmp_path_factory.mktemp("voc-src") / "toy", images=120, val_images=16, size=32,
                            seed=0).out
    train = (toy / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    val = (toy / "ImageSets/Segmentation/val.txt").read_text().split()
    masks = {i: np.asarray(Image.open(toy / "SegmentationClassAug" / f"{i}.png")) for i in train + val}
    voc_train, sbd_train, sbd_val = train[:40], train[20:100], train[100:] + val[:2]
    voc: dict[str, bytes] = {"VOCdevkit/VOC2012/classes.txt": (toy / "classes.txt").read_bytes()}
    for i in voc_train + val:
        voc[f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg"] = (toy / "JPEGImages" / f"{i}.jpg").read_bytes()
        voc[f"VOCdevkit/VOC2012/SegmentationClass/{i}.png"] = _png(_bordered(masks[i]))
    for i in train[40:]:  # SBD's images are VOC 2011's: VOC's JPEGImages holds them all
        voc[f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg"] = (toy / "JPEGImages" / f"{i}.jpg").read_bytes()
    lists = "VOCdevkit/VOC2012/ImageSets/Segmentation/"
    voc[lists + "train.txt"] = "".join(f"{i}\n" for i in voc_train).encode()
    voc[lists + "val.txt"] = "".join(f"{i}\n" for i in val).encode()
    voc[lists + "trainval.txt"] = "".join(f"{i}\n" for i in voc_train + val).encode()
    sbd: dict[str, bytes] = {}
    for i in sbd_train + sbd_val:
        sbd[f"benchmark_RELEASE/dataset/cls/{i}.mat"] = _mat(np.where(masks[i] == 255, 0, masks[i]))
        sbd[f"benchmark_RELEASE/dataset/img/{i}.jpg"] = b"not extracted"
    sbd["benchmark_RELEASE/dataset/train.txt"] = "".join(f"{i}\n" for i in sbd_train).encode()
    sbd["benchmark_RELEASE/dataset/val.txt"] = "".join(f"{i}\n" for i in sbd_val).encode()
    return {"voc": _tar(voc), "sbd": _tar(sbd, "w:gz"), "masks": masks, "train": train, "val": val,
            "voc_train": voc_train, "sbd_ids": set(sbd_train + sbd_val)}


def test_voc_and_sbd_build_train_aug_pass_check_data_and_train(voc_archives, serve, server, cli, run_cli,
                                                               tmp_path):
    a = voc_archives
    serve("voc", {"VOCtrainval_11-May-2012.tar": a["voc"]})
    serve("sbd", {"benchmark.tgz": a["sbd"]})
    root = tmp_path / "data"
    r = cli("download", "sbd", "voc", "--root", root, "--workers", "1")  # any order: voc first
    assert r.returncode == 0, r.stderr
    assert "check-data: usable voc root" in r.stderr
    voc = root / "VOCdevkit" / "VOC2012"
    train_aug = (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert train_aug == sorted(set(a["train"]))  # SBD train+val + VOC train - VOC val
    aug = voc / "SegmentationClassAug"
    for i in a["train"]:
        got = np.asarray(Image.open(aug / f"{i}.png"))
        m = a["masks"][i]
        want = np.where(m == 255, 0, m) if i in a["sbd_ids"] else _bordered(m)
        assert np.array_equal(got, want), i  # SBD's mask where SBD has one, else VOC's
    for i in a["val"]:
        assert np.array_equal(np.asarray(Image.open(aug / f"{i}.png")), _bordered(a["masks"][i]))
    assert Image.open(aug / f"{a['train'][50]}.png").mode == "P"
    assert not (root / "benchmark_RELEASE").exists()  # the .mat files went once converted
    record = json.loads((root / "incseg-downloads.json").read_text())
    assert record["files"]["benchmark.tgz"]["sha256"] == hashlib.sha256(a["sbd"]).hexdigest()
    assert set(record["done"]) == {"voc", "sbd"}
    assert not [p for p in root.rglob("*") if p.name.startswith(".") and "tmp" in p.name]
    # a rerun fetches nothing and says so
    n = len(server.gets())
    r = cli("download", "voc", "sbd", "--root", root, "--json")
    assert r.returncode == 0, r.stderr
    assert len(server.gets()) == n and r.stderr.count("already complete") == 2
    assert json.loads(r.stdout)["sources"]["sbd"]["check_data"]["usable"]
    # the toy recipe trains from the downloaded root
    splits = tmp_path / "splits"
    r = cli("prepare-splits", "--dataset", "voc", "--data", voc, "--task", "10-10-ov", "--out", splits,
            "--workers", "1")
    assert r.returncode == 0, r.stderr
    r = run_cli("train-base", "--data", voc, "--task", "10-10-ov", "--preset", "toy", "--batch-size", "8",
                "--crop-size", "32", "--eval-size", "32", "--epochs", "1", "--workers", "0",
                "--out", tmp_path / "step0", env={"INCSEG_SPLITS": str(splits)})
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "step0" / "metrics.json").read_text())["miou"]["all"] >= 0


def test_sbd_needs_voc_first(serve, cli, tmp_path):
    r = cli("download", "sbd", "--root", tmp_path / "data")
    assert r.returncode == 3
    assert "incseg download voc sbd --root" in r.stderr.strip().splitlines()[-1]


def _ade_zip(extra: dict[str, bytes] | None = None) -> bytes:
    entries = {}
    for split, prefix, n in (("training", "ADE_train", 3), ("validation", "ADE_val", 2)):
        for k in range(1, n + 1):
            name = f"{prefix}_{k:08d}"
            entries[f"ADEChallengeData2016/images/{split}/{name}.jpg"] = _jpg(seed=k)
            entries[f"ADEChallengeData2016/annotations/{split}/{name}.png"] = _png(
                np.full((16, 16), k * 7, np.uint8), "L")
    entries.update(extra or {})
    return _zip(entries)


def test_ade_resumes_a_dropped_connection_with_range(serve, server, cli, tmp_path):
    body = _ade_zip()
    serve("ade", {"ADEChallengeData2016.zip": body})
    server.drop["ADEChallengeData2016.zip"] = [len(body) // 3]  # the first GET breaks after a third
    root = tmp_path / "data"
    r = cli("download", "ade", "--root", root)
    assert r.returncode == 0, r.stderr
    gets = server.gets("ADEChallengeData2016.zip")
    assert len(gets) == 2 and gets[0][2] is None
    assert 0 < int(gets[1][2][len("bytes="):-1]) <= len(body) // 3  # the second asked for the rest
    assert "resuming" in r.stderr and "check-data: usable ade root" in r.stderr
    assert (root / "downloads" / "ADEChallengeData2016.zip").read_bytes() == body
    assert (root / "ADEChallengeData2016/annotations/validation/ADE_val_00000002.png").is_file()


def test_a_download_cut_every_time_is_exit_10_and_a_rerun_resumes(serve, server, cli, tmp_path):
    body = _ade_zip()
    serve("ade", {"ADEChallengeData2016.zip": body})
    tenth = len(body) // 10
    server.drop["ADEChallengeData2016.zip"] = [tenth] * (transfer.RETRIES + 1)
    root = tmp_path / "data"
    r = cli("download", "ade", "--root", root)
    assert r.returncode == 10, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and "rerun the same command to resume" in line
    part = root / "downloads" / "ADEChallengeData2016.zip.part"
    kept = part.stat().st_size
    assert tenth <= kept <= tenth * (transfer.RETRIES + 1)  # every attempt added to it
    assert (root / "downloads" / "ADEChallengeData2016.zip.part").read_bytes() == body[:kept]
    assert not (root / "ADEChallengeData2016").exists()
    r = cli("download", "ade", "--root", root)
    assert r.returncode == 0, r.stderr
    assert server.gets()[-1][2] == f"bytes={kept}-"  # the rerun asked for the rest only
    assert not part.exists() and (root / "downloads" / "ADEChallengeData2016.zip").read_bytes() == body


def test_a_checksum_mismatch_is_one_line_and_the_file_is_not_used(serve, server, cli, monkeypatch, tmp_path):
    serve("ade", {"ADEChallengeData2016.zip": _ade_zip()})
    source = sources.SOURCES["ade"]
    (archive,) = source.archives
    monkeypatch.setitem(sources.SOURCES, "ade", dataclasses.replace(
        source, archives=(dataclasses.replace(archive, checksum="sha1:" + "0" * 40),)))
    root = tmp_path / "data"
    r = cli("download", "ade", "--root", root)
    assert r.returncode == 5
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "not the expected file (sha1 is" in line and "removed and not used" in line
    assert not any((root / "downloads").iterdir())  # neither the file nor a .part
    assert not (root / "ADEChallengeData2016").exists()


def test_a_file_without_published_checksum_is_held_to_its_first_download(serve, server, cli, tmp_path):
    weights = {"resnet101-63fe2227.pth": b"torchvision weights", "resnet101_iabn_sync.pth.tar": b"iabn v1"}
    serve("weights", weights)
    root = tmp_path / "data"
    r = cli("download", "weights", "--root", root)
    assert r.returncode == 0, r.stderr
    iabn = root / "weights" / "resnet101_iabn_sync.pth.tar"
    assert iabn.read_bytes() == b"iabn v1"
    assert (tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet101-63fe2227.pth").is_file()
    recorded = json.loads((root / "incseg-downloads.json").read_text())["files"]["resnet101_iabn_sync.pth.tar"]
    assert recorded["sha256"] == hashlib.sha256(b"iabn v1").hexdigest() and recorded["published"] is None
    iabn.unlink()  # a later copy from a mirror that serves something else
    server.files["resnet101_iabn_sync.pth.tar"] = b"iabn v2, tampered"
    r = cli("download", "weights", "--root", root)
    assert r.returncode == 5
    assert "the first download into this root had" in r.stderr and not iabn.exists()


def test_torchvision_weights_are_held_to_the_hash_in_their_name(serve, server, cli, tmp_path):
    serve("weights", {"resnet101-63fe2227.pth": b"x", "resnet101_iabn_sync.pth.tar": b"y"}, checksums=False)
    r = cli("download", "weights", "--root", tmp_path / "data")
    assert r.returncode == 5 and "sha256 is" in r.stderr and "the published one is 63fe2227" in r.stderr


@pytest.mark.parametrize("kind", ["tar-dotdot", "tar-absolute", "tar-symlink-out", "zip-dotdot", "zip-symlink"])
def test_entries_that_would_land_outside_the_root_are_refused(kind, serve, cli, tmp_path):
    root = tmp_path / "inside" / "data"
    good = {"ADEChallengeData2016/images/training/ADE_train_00000001.jpg": _jpg()}
    if kind.startswith("tar"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in good.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            if kind == "tar-symlink-out":
                info = tarfile.TarInfo("ADEChallengeData2016/evil")
                info.type, info.linkname = tarfile.SYMTYPE, "../../../outside"
                tar.addfile(info)
            else:
                name = "../../evil.txt" if kind == "tar-dotdot" else str(tmp_path / "evil.txt")
                info = tarfile.TarInfo(name)
                info.size = 4
                tar.addfile(info, io.BytesIO(b"evil"))
        body = buf.getvalue()
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in good.items():
                zf.writestr(name, data)
            if kind == "zip-dotdot":
                zf.writestr("../../evil.txt", b"evil")
            else:
                info = zipfile.ZipInfo("ADEChallengeData2016/link")
                info.external_attr = (0o120777 << 16)
                zf.writestr(info, "../../../outside")
        body = buf.getvalue()
    serve("ade", {"ADEChallengeData2016.zip": body})
    r = cli("download", "ade", "--root", root)
    assert r.returncode == 5, r.stderr
    assert "refused entry" in r.stderr and "nothing of the archive was extracted" in r.stderr
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "inside" / "evil.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == ["downloads", "incseg-downloads.json"]


def test_not_enough_disk_is_refused_before_any_download(serve, server, cli, monkeypatch, tmp_path):
    serve("ade", {"ADEChallengeData2016.zip": _ade_zip()})
    monkeypatch.setattr(stage.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 100, 100))
    r = cli("download", "ade", "--root", tmp_path / "data")
    assert r.returncode == 9 and "GB free" in r.stderr
    assert server.gets() == []


def test_coco_images_and_cocostuff_maps_become_thing_ids(serve, cli, tmp_path):
    ids = {"train2017": ["000000000009", "000000000025"], "val2017": ["000000000139"]}
    stuff = np.array([[0, 89, 90, 91], [100, 181, 255, 5]], np.uint8)  # person, toothbrush, id 91, stuff..., void
    files = {f"{split}.zip": _zip({f"{split}/{i}.jpg": _jpg(seed=k) for k, i in enumerate(ids[split])})
             for split in ids}
    files["stuffthingmaps_trainval2017.zip"] = _zip(
        {f"{split}/{i}.png": _png(stuff, "L") for split in ids for i in ids[split]})
    serve("coco", files)
    root = tmp_path / "data"
    r = cli("download", "coco", "--root", root)
    assert r.returncode == 0, r.stderr
    assert "check-data: usable coco root" in r.stderr
    got = np.asarray(Image.open(root / "coco/annotations/val2017/000000000139.png"))
    assert got.tolist() == [[1, 90, 91, 0], [0, 0, 255, 6]]
    from incseg_cli.datasets.coco import CLASS_NAMES

    assert (CLASS_NAMES[1], CLASS_NAMES[90]) == ("person", "toothbrush")
    assert (root / "coco/images/train2017/000000000025.jpg").is_file()
    assert not (root / "coco" / stage.STUFF_MAPS_DIR).exists()


def test_unknown_names_and_bad_mirror_are_usage_errors(cli, tmp_path):
    assert cli("download", "imagenet", "--root", tmp_path).returncode == 2
    r = cli("download", "ade", "--root", tmp_path, "--mirror", "ftp://x")
    assert r.returncode == 2 and "--mirror" in r.stderr
