"""The shipped published results: copied exactly from the papers' tables, every row usable."""

import re

import pytest

from helpers import SHARED
from incseg_cli.published import compare, find, group_classes, load_published
from incseg_cli.tasks import get_task


def _only(method, dataset, task, step, source, name=None, variant=None):
    rows = [p for p in find(method, dataset, task, step, variant) if p.source == source
            and (name is None or p.name == name)]
    assert len(rows) == 1, rows
    return rows[0]


def _values(entry, keys=("old", "new", "all")):
    return [entry.columns[k].value for k in keys]


def test_every_row_is_usable():
    rows = load_published()
    assert len(rows) == 162
    assert not [p for p in rows if "alife" in p.method or p.source == "alife"]  # ALIFE's own tables: not shipped
    for p in rows:
        task = get_task(p.dataset, p.task)
        assert p.step == task.num_steps - 1, p  # every table reports the last step
        for col in p.columns.values():
            classes = group_classes(task, p.step, col.group)
            assert (classes is None) == (col.group == "avg"), (p, col)
        assert p.citation and p.table and p.val_set in ("all", "seen")


def test_a_few_rows_by_hand():
    wilson = _only("wilson", "voc", "15-5", 1, "wilson")
    assert _values(wilson) == [73.6, 43.8, 67.3] and wilson.table == "Table 1"
    assert [c.classes for c in wilson.columns.values()] == ["1-15", "16-20", "0-20"]
    assert _values(_only("wilson", "voc", "10-10-ov", 1, "wilson")) == [70.4, 57.1, 65.0]
    assert _values(_only("wilson", "voc", "15-5-ov", 1, "wilson", variant="relaxed")) == [76.1, 45.6, 69.5]
    coco = _only("wilson", "coco", "coco-voc", 1, "wilson")
    assert coco.columns["all"].value == 55.7 and coco.columns["coco_all"].value == 40.6
    dkd_m = _only("dkd-m", "voc", "15-1-ov", 5, "dkd-readme")
    assert _values(dkd_m, ("hiou", "all")) == [64.09, 72.95] and dkd_m.val_set == "seen"
    plop = _only("plop", "voc", "15-1-ov", 5, "plop")
    assert _values(plop, ("old", "new", "all", "avg")) == [65.12, 21.11, 54.64, 67.21]
    assert plop.columns["old"].group == "base+bg"
    mib_ade = _only("mib", "ade", "100-10", 5, "mib")
    assert [mib_ade.columns[f"new_step{k}"].value for k in range(1, 6)] == [10.4, 14.8, 12.8, 13.6, 18.7]
    assert _only("mib", "ade", "100-5-ov", 10, "ssul-readme").columns["all"].value == 25.96
    assert find("wilson", "voc", "19-1-ov", 1) == []


def _spec_row(text: str, first_cell: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))
    return [c.strip().strip("*") for c in line.strip().strip("|").split("|")]


def test_rows_against_the_spec_text():
    spec = SHARED / "spec"
    if not (spec / "wilson.md").is_file():
        pytest.skip(f"specs not found at {spec}")
    wilson = (spec / "wilson.md").read_text()
    table2 = wilson[wilson.index("### Table 2: VOC 10-10"):wilson.index("### Table 3")]
    cells = _spec_row(table2, "**WILSON**")
    assert [float(c) for c in cells[2:8]] == \
        _values(_only("wilson", "voc", "10-10", 1, "wilson")) + _values(_only("wilson", "voc", "10-10-ov", 1, "wilson"))
    table1 = wilson[wilson.index("### Table 1: VOC 15-5"):wilson.index("### Table 2")]
    cells = _spec_row(table1, "MiB⋆")
    assert [float(c) for c in cells[2:5]] == _values(_only("mib", "voc", "15-5", 1, "wilson"))
    plop = (spec / "plop.md").read_text()
    cells = _spec_row(plop[plop.index("## 6. Reported results"):], "MiB (re-run)")
    entry = _only("mib", "voc", "19-1-ov", 1, "plop", name="MiB (PLOP's re-run)")
    assert [float(c) for c in cells[1:5]] == _values(entry, ("old", "new", "all", "avg"))
    alife = (spec / "alife.md").read_text()
    section = alife[alife.index("MiB paper, Table 2, ADE"):]
    cells = _spec_row(section, "50-50")
    entry = _only("mib", "ade", "50-50", 2, "mib")
    assert float(cells[1]) == entry.columns["old"].value and float(cells[3]) == entry.columns["all"].value
    assert [float(x) for x in re.findall(r"[\d.]+", cells[2])] == [entry.columns["new_step1"].value,
                                                                 entry.columns["new_step2"].value]
    cells = _spec_row(alife[alife.index("SSUL README"):], "SSUL-M")
    assert float(cells[1]) == _only("ssul-m", "voc", "15-1-ov", 5, "ssul-readme").columns["all"].value


def test_compare_over_the_columns_classes():
    entry = _only("plop", "voc", "15-5-ov", 1, "plop")
    iou = {0: 0.9} | {c: 0.6 for c in range(1, 16)} | {c: 0.3 for c in range(16, 21)}
    iou[20] = None  # no ground truth: left out, as evaluate does
    cols = compare(entry, iou)
    assert cols["old"]["run"] == pytest.approx(100 * (0.9 + 15 * 0.6) / 16, abs=0.006)
    assert cols["new"]["run"] == 30.0 and cols["new"]["diff"] == round(30.0 - 51.71, 2)
    assert cols["avg"]["run"] is None
    coco = compare(_only("wilson", "coco", "coco-voc", 1, "wilson"), {0: 0.5, 1: 0.7}, "VOC val")
    assert coco["all"]["run"] == 60.0 and coco["coco_all"]["run"] is None  # COCO val: not this run's data


def test_hiou_column_is_the_harmonic_mean_of_base_with_background_and_added():
    from incseg_cli.published import compare

    entry = _only("dkd", "voc", "15-5-ov", 1, "dkd-readme")
    iou = {c: (0.6 if c <= 15 else 0.3) for c in range(21)}
    hiou = compare(entry, iou)["hiou"]
    assert hiou["run"] == 40.0 and hiou["paper"] == 67.17  # 2·60·30/(60+30)
