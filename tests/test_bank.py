"""The HDF5 feature bank: written, read back identical, appended, rotated, validated."""

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from incseg_cli.errors import CorruptFileError, IncompatibleError, InputError
from incseg_cli.bank import (
    BankWriter,
    check_bank,
    check_bank_fits,
    read_bank,
    recorded_fingerprint,
    space_name,
    write_checksum,
)
from helpers import write_bank
from incseg_cli.models.rotations import cayley, num_params
from incseg_cli.stages.banks import feature_sources
from incseg_cli.stages.features import interpolation_matrix, region_means
from incseg_cli.stages.rotations import load_rotations, save_rotations, write_rotated

DIM = 8
ATTRS = {"feature_dim": DIM, "step": 0, "dataset": "voc", "task": "10-10-ov",
         "source_checkpoint_sha256": "a" * 64, "space": space_name(0)}


def _write(path, classes=(0, 1, 2), rows=5, seed=0, attrs=ATTRS):
    rng = np.random.default_rng(seed)
    data = {c: rng.random((rows + c, DIM), dtype=np.float32) for c in classes}
    with BankWriter(path, attrs) as w:
        for c, x in data.items():
            w.add(c, x, f"class{c}", "extracted", 0)
    return data


def test_write_read_identical_and_h5_layout(tmp_path):
    path = tmp_path / "bank.h5"
    data = _write(path)
    bank = read_bank(path)
    assert bank.labels == [0, 1, 2] and bank.feature_dim == DIM and bank.step == 0
    for c, x in data.items():
        assert np.array_equal(bank.classes[c].features, x) and bank.classes[c].count == len(x)
    with h5py.File(path) as f:  # what h5ls -r / h5py users see
        assert f.attrs["format"] == "incseg-feature-bank" and list(f.attrs["classes"]) == [0, 1, 2]
        ds = f["classes/1/features"]
        assert ds.dtype == np.float32 and ds.shape == (6, DIM) and ds.compression == "gzip" and ds.chunks
        assert f["classes/1"].attrs["source"] == "extracted" and f["classes/1"].attrs["count"] == 6
        assert f.attrs["space"] == "step 0 features"
    feats, labels = bank.stacked()
    assert feats.shape == (5 + 6 + 7, DIM) and labels.tolist() == [0] * 5 + [1] * 6 + [2] * 7
    copy = tmp_path / "copy.h5"
    write_bank(copy, bank)
    again = read_bank(copy)
    assert again.attrs == bank.attrs | {"classes": again.attrs["classes"]}
    assert all(np.array_equal(again.classes[c].features, bank.classes[c].features) for c in bank.labels)


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "bank.h5"
    with pytest.raises(RuntimeError):
        with BankWriter(path, ATTRS) as w:
            w.add(0, np.ones((3, DIM), np.float32), "bg", "extracted", 0)
            raise RuntimeError("crash in the middle")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        with BankWriter(path, ATTRS) as w:
            w.add(0, np.full((3, DIM), np.nan, np.float32), "bg", "extracted", 0)
    with pytest.raises(ValueError):
        with BankWriter(path, ATTRS) as w:
            w.add(0, np.ones((3, DIM + 1), np.float32), "bg", "extracted", 0)
    assert list(tmp_path.iterdir()) == []


def test_bad_banks_are_reported(tmp_path):
    path = tmp_path / "bank.h5"
    _write(path)
    with h5py.File(path, "a") as f:
        f["classes/1/features"][2, 3] = np.nan
    with pytest.raises(CorruptFileError, match="checksum mismatch"):  # any edit, until resealed
        check_bank(path)
    write_checksum(path)
    report = check_bank(path)
    assert len(report["problems"]) == 1 and "/classes/1/features" in report["problems"][0]
    with pytest.raises(CorruptFileError, match="NaN"):
        read_bank(path)
    _write(tmp_path / "b2.h5")
    with h5py.File(tmp_path / "b2.h5", "a") as f:
        del f["classes/2"]
        f["classes/0"].attrs["count"] = 99
    write_checksum(tmp_path / "b2.h5")
    problems = check_bank(tmp_path / "b2.h5")["problems"]
    assert any("holds groups" in p for p in problems) and any("count" in p for p in problems)
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CorruptFileError):
        read_bank(trunc)
    with pytest.raises(InputError):
        read_bank(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(CorruptFileError, match="incseg-feature-bank"):
        read_bank(other)


def test_check_bank_fits_and_recorded_fingerprint(tmp_path):
    path = tmp_path / "bank.h5"
    _write(path)
    bank = read_bank(path)
    fits = dict(dataset="voc", step=0, classes=[0, 1, 2], feature_dim=DIM,
                sources={"a" * 64}, model="--prev x", purpose="stage 1")
    check_bank_fits(bank, **fits)
    for change, message in ((dict(feature_dim=16), "8-d features"), (dict(classes=[0, 1]), "holds classes 0-2"),
                            (dict(step=1), "step 0 features"), (dict(sources={"b" * 64}), "aaaaaaaaaaaa"),
                            (dict(dataset="ade"), "voc bank")):
        with pytest.raises(IncompatibleError, match=message):
            check_bank_fits(bank, **{**fits, **change})
    assert feature_sources("s", {"method": "alife-m", "parent_sha256": "p"}) == {"s", "p"}
    assert feature_sources("s", {"method": "alife", "parent_sha256": "p"}) == {"s"}
    assert recorded_fingerprint(path) is None  # written without one
    _write(tmp_path / "fp.h5", attrs={**ATTRS, "fingerprint": "f" * 64})
    assert recorded_fingerprint(tmp_path / "fp.h5") == "f" * 64
    (tmp_path / "junk.h5").write_bytes(b"not a bank")
    assert recorded_fingerprint(tmp_path / "junk.h5") is None


def test_rotated_bank_and_rotations_file(tmp_path):
    path = tmp_path / "bank.h5"
    data = _write(path, classes=(0, 3))
    bank = read_bank(path)
    params = torch.rand(2, num_params(DIM)) - 0.5
    out = tmp_path / "rotated.h5"
    write_rotated(bank, params, out, step=1, source_sha="c" * 64, source_path="s1", extra={})
    rotated = read_bank(out)
    assert rotated.attrs["space"] == "step 1 features" and rotated.step == 1
    assert rotated.source_sha256 == "c" * 64 and rotated.labels == [0, 3]
    r = cayley(params.double(), DIM)
    for row, c in enumerate((0, 3)):
        m = torch.from_numpy(data[c]).double()
        got = torch.from_numpy(rotated.classes[c].features).double()
        assert rotated.classes[c].source == "rotated" and rotated.classes[c].step == 0
        assert torch.allclose(got, m @ r[row].T, atol=1e-6)
        assert torch.allclose(got.norm(dim=1), m.norm(dim=1), atol=1e-5)
    header = {"format": "incseg-rotations", "version": 1, "classes": [0, 3], "feature_dim": DIM}
    save_rotations(tmp_path / "rot.pt", params, header)
    loaded_header, loaded = load_rotations(tmp_path / "rot.pt")
    assert torch.equal(loaded, params) and loaded_header == header
    torch.load(tmp_path / "rot.pt", weights_only=True)
    save_rotations(tmp_path / "bad.pt", params[:1], header)
    with pytest.raises(CorruptFileError, match="declares 2 classes"):
        load_rotations(tmp_path / "bad.pt")


def test_region_means_equal_masked_mean_of_upsampled_features():
    g = torch.Generator().manual_seed(0)
    features = torch.rand(3, 5, 4, 6, generator=g, dtype=torch.float64)
    masks = torch.rand(3, 32, 48, generator=g) > 0.6
    masks[2] = False
    up = F.interpolate(features, size=(32, 48), mode="bilinear", align_corners=False)
    means, counts = region_means(features, masks)
    for b in range(2):
        expected = up[b][:, masks[b]].mean(dim=1)
        assert torch.allclose(means[b], expected, atol=1e-12)
    assert counts.tolist() == masks.sum((1, 2)).tolist() and torch.equal(means[2], torch.zeros(5, dtype=torch.float64))
    a = interpolation_matrix(4, 32)
    assert torch.allclose(a.sum(0), torch.ones(32))
