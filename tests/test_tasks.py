import pytest

from incseg_cli.errors import UsageError
from incseg_cli.tasks import get_task


def test_voc_15_5():
    t = get_task("voc", "15-5-ov")
    assert t.overlap and t.key == "15-5-ov" and t.num_steps == 2
    assert t.new_classes(0) == list(range(16))
    assert t.new_classes(1) == [16, 17, 18, 19, 20]
    assert t.old_classes(1) == list(range(16))
    assert t.head_sizes(1) == [16, 5]


def test_repeated_steps_and_explicit_steps():
    assert [len(s) for s in get_task("voc", "15-1").steps] == [16, 1, 1, 1, 1, 1]
    assert [len(s) for s in get_task("voc", "5-3").steps] == [6, 3, 3, 3, 3, 3]
    assert [len(s) for s in get_task("voc", "10-5-5").steps] == [11, 5, 5]
    assert [len(s) for s in get_task("ade", "100-10").steps] == [101] + [10] * 5
    assert [len(s) for s in get_task("ade", "50-50").steps] == [51, 50, 50]
    assert get_task("voc", "offline").num_steps == 1


@pytest.mark.parametrize("name", ["15-7", "foo", "0-20", "21-1", "15-5-5"])
def test_unknown_tasks(name):
    with pytest.raises(UsageError):
        get_task("voc", name)


def test_coco_voc_order():
    t = get_task("coco", "coco-voc")
    assert t.head_sizes(1) == [61, 20]
    assert t.model_index(1) == 61  # person is the first VOC class
    lut = t.eval_lut(1)
    assert lut[1] == 61 and lut[8] == t.model_index(8) and lut[255] == 255


def test_luts():
    t = get_task("voc", "15-5")
    train1 = t.train_lut(1)
    assert train1[3] == 0 and train1[17] == 17 and train1[0] == 0 and train1[255] == 255
    eval0 = t.eval_lut(0)
    assert eval0[3] == 3 and eval0[17] == 0 and eval0[255] == 255


def test_step_bounds():
    with pytest.raises(UsageError):
        get_task("voc", "15-5").new_classes(2)
