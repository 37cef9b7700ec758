import json

import numpy as np
import pytest
import torch

from incseg_cli.engine.checkpoint import check_task, load_checkpoint, make_header, model_from_checkpoint, save_checkpoint
from incseg_cli.engine.evaluate import ConfusionMatrix, iou_per_class, metrics_from_confusion
from incseg_cli.engine.optim import PolyLR, build_optimizer
from incseg_cli.engine.rundir import RunDir
from incseg_cli.engine.sampler import EpochBatchSampler
from incseg_cli.errors import CorruptFileError, IncompatibleError, InputError, OutputExistsError
from incseg_cli.models.deeplab import ModelSpec, build_model
from incseg_cli.tasks import get_task


def test_confusion_and_iou_by_hand():
    cm = ConfusionMatrix(3)
    target = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm.update(pred, target)
    mat = cm.numpy()
    assert mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    iou = iou_per_class(mat)
    assert iou[0] == pytest.approx(1 / 3)  # tp 1, gt 2, pred 2
    assert iou[1] == pytest.approx(2 / 3)
    assert iou[2] == 0.0


def test_metric_groups():
    task = get_task("voc", "15-5")
    n = task.num_classes(1)
    mat = np.zeros((n, n), dtype=np.int64)
    for c in range(n):
        mat[c, c] = 10
    mat[3, 3] = 0  # class 3 absent from GT: left out of the means
    mat[17, 0] = 10  # half of class 17 predicted as background
    m = metrics_from_confusion(mat, task, 1, {"name": "crop"})
    assert m["miou"]["old"] == pytest.approx(1.0)
    assert m["classes"][3]["iou"] is None
    iou17 = 10 / 20
    bg = 10 / 20
    assert m["miou"]["new"] == pytest.approx((4 + iou17) / 5)
    assert m["miou"]["background"] == pytest.approx(bg)
    assert m["miou"]["all"] == pytest.approx((14 + iou17 + bg + 4) / 20)
    assert m["groups"]["old"] == "1-15" and m["groups"]["new"] == "16-20"
    assert m["miou"]["base"] == m["miou"]["old"] and m["miou"]["added"] == m["miou"]["new"]


def test_poly_and_constant_then_poly():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [p]}], "sgd", 0.1, 0.0)
    sched = PolyLR(opt, max_iters=100, power=0.9)
    for _ in range(50):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**0.9)
    opt = build_optimizer([{"params": [p], "lr": 0.01}], "sgd", 0.1, 0.0)
    sched = PolyLR(opt, max_iters=40, power=0.9, constant_iters=5)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[:5] == [0.01] * 5
    assert lrs[5] == pytest.approx(0.01 * (1 - 5 / 40) ** 0.9)  # jumps down on the global k
    state = sched.state_dict()
    sched2 = PolyLR(opt, max_iters=40, power=0.9, constant_iters=5)
    sched2.load_state_dict(state)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 6 / 40) ** 0.9)


def test_sampler_is_deterministic_and_resumable():
    s = EpochBatchSampler(10, 3, seed=1)
    s.set_epoch(2)
    full = list(s)
    assert len(full) == 3 and all(len(b) == 3 for b in full)
    s.set_epoch(2, skip_batches=1)
    assert list(s) == full[1:]
    s.set_epoch(3)
    assert list(s) != full
    # two ranks split each global batch
    r0 = EpochBatchSampler(10, 2, seed=1, rank=0, world_size=2)
    r1 = EpochBatchSampler(10, 2, seed=1, rank=1, world_size=2)
    r0.set_epoch(0)
    r1.set_epoch(0)
    seen = [i for b in list(r0) + list(r1) for i, _ in b]
    assert len(seen) == len(set(seen)) == 8


def _tiny_checkpoint(tmp_path, task_name="15-5", step=0):
    task = get_task("voc", task_name)
    spec = ModelSpec.for_backbone("tiny", task.head_sizes(step))
    model = build_model(spec)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, make_header(task, step, "base", spec, None), model)
    return path, model


def test_checkpoint_roundtrip_and_task_check(tmp_path):
    path, model = _tiny_checkpoint(tmp_path)
    ckpt = load_checkpoint(tmp_path)  # a run directory works too
    assert ckpt.step == 0 and ckpt.header["steps"] == [list(range(16))]
    rebuilt = model_from_checkpoint(ckpt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k])
    check_task(ckpt, get_task("voc", "15-5"), 0)
    with pytest.raises(IncompatibleError, match="10-10"):
        check_task(ckpt, get_task("voc", "10-10"), 0)
    with pytest.raises(IncompatibleError):
        check_task(ckpt, get_task("voc", "15-5"), 1)


def test_checkpoint_errors(tmp_path):
    path, _ = _tiny_checkpoint(tmp_path)
    with pytest.raises(InputError):
        load_checkpoint(tmp_path / "missing.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CorruptFileError, match="truncated"):
        load_checkpoint(trunc)
    evil = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"header": {"format": "incseg-checkpoint"}, "x": Payload()}, evil)
    with pytest.raises(CorruptFileError, match="arbitrary"):
        load_checkpoint(evil)
    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(1)}, plain)
    with pytest.raises(CorruptFileError, match="not an incseg checkpoint"):
        load_checkpoint(plain)


def test_rundir_decisions(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.prepare("abc", force=False) == "fresh"
    run.start_manifest("x", {}, "abc", {}, {})
    assert run.prepare("abc", force=False) == "fresh"  # running, no last.pt yet
    run.last.write_bytes(b"x")
    assert run.prepare("abc", force=False) == "resume"
    with pytest.raises(OutputExistsError):
        run.prepare("other", force=False)
    manifest = json.loads(run.manifest_path.read_text())
    run.checkpoint.write_bytes(b"x")  # before the manifest says complete, as a stage writes them
    run.update_manifest(manifest, status="complete")
    assert run.prepare("abc", force=False) == "complete"
    assert run.prepare("other", force=True) == "fresh"
    assert not run.checkpoint.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        RunDir(foreign).prepare("abc", force=False)
