"""incseg report on hand-made run directories: table values, chains, joint scoring, plots,
and one-line errors for bad run directories."""

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from helpers import error_line
from incseg_cli.errors import CorruptFileError, IncompatibleError, InputError, UsageError
from incseg_cli.fileio import sha256_file
from incseg_cli.stages.report import build_report, markdown_table, write_plots
from incseg_cli.tasks import get_task


def _metrics(task_name: str, step: int, method: str, iou: dict[int, float], dataset: str = "voc") -> dict:
    task = get_task(dataset, task_name)
    mean = lambda labels: sum(iou[c] for c in labels) / len(labels) if labels else None  # noqa: E731
    old = [c for c in task.old_classes(step) if c]
    new = [c for c in task.new_classes(step) if c]
    return {
        "dataset": dataset, "task": task.key, "step": step, "method": method,
        "miou": {"all": mean(task.seen_classes(step)), "old": mean(old), "new": mean(new), "background": iou[0],
                 "base": mean([c for c in task.new_classes(0) if c]), "added": None},
        "classes": [{"label": c, "name": f"class{c}", "iou": iou[c]} for c in task.seen_classes(step)],
    }


def make_run(path, task_name, step, method, iou, prev=None, train_seconds=10.0, relative_prev=False, preset="toy",
             val_set="seen"):
    """A finished run directory by hand: toy runs by default (no published rows)."""
    path.mkdir(parents=True)
    (path / "checkpoint.pt").write_bytes(f"{path.name} weights".encode())
    inputs = {f"splits/voc/{task_name}/train-{step}.txt": "0" * 64}
    if prev is not None:
        key = "elsewhere/checkpoint.pt" if relative_prev else str(prev / "checkpoint.pt")
        inputs[key] = sha256_file(prev / "checkpoint.pt")
    manifest = {"status": "complete", "inputs": inputs, "train_seconds": train_seconds,
                "options": {"preset": preset, "val_set": val_set}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    metrics = _metrics(task_name, step, method, iou)
    metrics["protocol"] = {"name": "crop", "size": 64, "images": 100, "val_set": val_set}
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


@pytest.fixture
def runs(tmp_path):
    """step0 (0.6 on 1-10), ft (old 0, new 0.5) and mib (old 0.5, new 0.4) from it, and a joint
    run whose class c has IoU c/100."""
    base = {c: 0.6 for c in range(11)} | {0: 0.9}
    s0 = make_run(tmp_path / "step0", "10-10-ov", 0, "base", base)
    ft = make_run(tmp_path / "step1-ft", "10-10-ov", 1, "ft", {0: 0.8} | {c: 0.0 for c in range(1, 11)}
                  | {c: 0.5 for c in range(11, 21)}, prev=s0)
    # a relative input path that does not resolve here: linked by the checkpoint's sha256
    mib = make_run(tmp_path / "step1-mib", "10-10-ov", 1, "mib", {0: 0.85} | {c: 0.5 for c in range(1, 11)}
                   | {c: 0.4 for c in range(11, 21)}, prev=s0, relative_prev=True)
    joint = make_run(tmp_path / "joint", "offline", 0, "joint", {c: c / 100 for c in range(21)}, train_seconds=30)
    return {"step0": s0, "ft": ft, "mib": mib, "joint": joint}


def test_table_in_any_order(runs):
    order = list(runs.values())
    random.Random(0).shuffle(order)
    report = build_report(order)
    table = [(r.task, r.step, r.label) for r in report.rows]
    assert table == [("10-10-ov", 0, "base"), ("10-10-ov", 1, "ft"), ("10-10-ov", 1, "mib"), ("10-10-ov", 1, "joint")]
    ft, mib = report.rows[1], report.rows[2]
    assert (ft.miou["old"], ft.miou["new"]) == (0.0, 0.5)
    assert (mib.miou["old"], mib.miou["new"]) == (0.5, pytest.approx(0.4))
    assert ft.run.parent.path == runs["step0"] and mib.run.parent.path == runs["step0"]


def test_joint_is_scored_in_the_incremental_task_groups(runs):
    joint = build_report(list(runs.values())).rows[-1]
    # class c has IoU c/100: old 1-10 -> 5.5, new 11-20 -> 15.5, all 0-20 -> 10
    assert joint.miou["old"] == pytest.approx(0.055)
    assert joint.miou["new"] == pytest.approx(0.155)
    assert joint.miou["all"] == pytest.approx(0.10)
    assert joint.scored_as == "10-10-ov step 1"
    alone = build_report([runs["joint"]]).rows[0]  # nothing to compare with: its own groups
    assert alone.task == "offline" and alone.miou["old"] is None


def test_chains_and_json(runs):
    report = build_report(list(runs.values()))
    chains = {c["label"]: [r.path.name for r in c["runs"]] for c in report.chains}
    assert chains == {"ft": ["step0", "step1-ft"], "mib": ["step0", "step1-mib"]}
    doc = report.to_json()
    assert [r["label"] for r in doc["rows"]] == ["base", "ft", "mib", "joint"]
    assert doc["rows"][1]["parent"] == str(runs["step0"]) and doc["rows"][1]["train_seconds"] == 10.0
    assert set(doc["chains"][0]["miou_by_step"]) == {"0", "1"}


def test_markdown_rows(runs):
    text = markdown_table(build_report(list(runs.values())))
    assert "| 10-10-ov | 1 | ft | 0.00 | 50.00 | " in text
    assert "| 10-10-ov | 1 | joint | 5.50 | 15.50 | 10.00 | – | seen (100) | 30 |" in text
    assert "Published results" not in text  # toy runs have no paper
    assert "scored in the class groups of 10-10-ov step 1" in text


def test_same_method_twice_gets_the_directory_name(runs, tmp_path):
    again = make_run(tmp_path / "mib-seed1", "10-10-ov", 1, "mib", {c: 0.3 for c in range(21)}, prev=runs["step0"])
    labels = [r.label for r in build_report([runs["step0"], runs["mib"], again]).rows]
    assert labels == ["base", "mib (mib-seed1)", "mib (step1-mib)"]


def _assert_png(path):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 100


def test_plots_are_valid_pngs(runs, tmp_path):
    written = write_plots(build_report(list(runs.values())), tmp_path / "plots")
    assert [p.name for p in written] == ["miou-per-step.png", "groups-10-10-ov-step1.png", "classes-10-10-ov-step1.png"]
    for path in written:
        _assert_png(path)
    assert not list((tmp_path / "plots").glob(".*"))  # no temporary files left behind
    step0 = write_plots(build_report(list(runs.values())), tmp_path / "p0", classes_step=0)
    assert step0[-1].name == "classes-10-10-ov-step0.png"
    with pytest.raises(UsageError, match="no run of 10-10-ov at that step"):
        write_plots(build_report(list(runs.values())), tmp_path / "p2", classes_step=2)


def test_bad_run_directories(runs, tmp_path):
    with pytest.raises(InputError, match="missing: run directory not found"):
        build_report([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no metrics.json"):
        build_report([empty])
    running = tmp_path / "running"
    running.mkdir()
    (running / "manifest.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(InputError, match="not finished"):
        build_report([running])
    (running / "manifest.json").write_text(json.dumps({"status": "complete"}))
    (running / "metrics.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="metrics.json: not valid JSON"):
        build_report([running])
    (running / "metrics.json").write_text(json.dumps({"dataset": "voc"}))
    with pytest.raises(CorruptFileError, match="not incseg metrics"):
        build_report([running])
    other = _metrics("10-10-ov", 0, "base", {c: 0.5 for c in range(11)}) | {"task": "7-7"}
    (running / "metrics.json").write_text(json.dumps(other))
    with pytest.raises(IncompatibleError, match="running/metrics.json: unknown task .7-7."):
        build_report([running])


def test_cli_subprocess(runs, run_cli, tmp_path):
    doc = run_cli("report", runs["mib"], runs["joint"], runs["step0"], runs["ft"], "--json", "--plots", tmp_path / "plots")
    assert doc.returncode == 0, doc.stderr
    parsed = json.loads(doc.stdout)
    assert [r["label"] for r in parsed["rows"]] == ["base", "ft", "mib", "joint"]
    assert len(parsed["plots"]) == 3
    for path in parsed["plots"]:
        _assert_png(path)
    assert "wrote" in doc.stderr
    bad = run_cli("report", runs["step0"], tmp_path / "nope")
    assert bad.returncode == 3 and "nope: run directory not found" in error_line(bad.stderr, only=True)


def _main(*args):
    """The CLI entry point in this process (no interpreter start): (exit code, stdout, stderr)."""
    import contextlib
    import io

    from incseg_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    return exit_.value.code, out.getvalue(), err.getvalue()


def test_cli_outputs_and_usage_errors(runs):
    args = [runs["mib"], runs["joint"], runs["step0"], runs["ft"]]
    code, out, _ = _main("report", *args)
    assert code == 0 and "10-10-ov" in out and "joint" in out and "50.00" in out
    code, out, _ = _main("report", *args, "--markdown")
    assert code == 0 and out.count("| 10-10-ov |") == 4
    code, _, err = _main("report", runs["step0"], "--json", "--markdown")
    assert code == 2 and "choose one" in error_line(err, only=True)
    code, _, err = _main("report", runs["step0"], "--classes-step", "1")
    assert code == 2 and "--plots" in error_line(err, only=True)


# -- paths that are not finished runs -----------------------------------------------------------------
def test_skips_banks_rotations_and_unfinished_runs(runs, tmp_path):
    (tmp_path / "bank.h5").write_bytes(b"\x89HDF\r\n")
    (tmp_path / "rot.pt").write_bytes(b"PK")
    (tmp_path / "notes.txt").write_text("x")
    running = tmp_path / "step1-alife"
    running.mkdir()
    (running / "manifest.json").write_text(json.dumps({"status": "running"}))
    (running / "last.pt").write_bytes(b"PK")
    paths = sorted(tmp_path.iterdir())  # what `incseg report runs/toy/*` hands over
    code, out, err = _main("report", *paths, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [r["label"] for r in doc["rows"]] == ["base", "ft", "mib", "joint"]
    assert len(doc["skipped"]) == 4
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4
    for name, why in (("bank.h5", "a feature bank"), ("rot.pt", "a checkpoint or rotations file"),
                      ("notes.txt", "a file"), ("step1-alife", "run is not finished (status running)")):
        assert sum(name in w and why in w for w in warnings) == 1, (name, warnings)
    code, _, err = _main("report", tmp_path / "bank.h5", tmp_path / "rot.pt", running)
    assert code == 3 and "nothing to report: none of the 3 paths" in error_line(err)


# -- the papers' numbers beside the run's ---------------------------------------------------------------
def test_published_rows_beside_voc_runs(tmp_path):
    iou = {0: 0.9} | {c: 0.7 for c in range(1, 16)} | {c: 0.4 for c in range(16, 21)}
    s0 = make_run(tmp_path / "step0", "15-5-ov", 0, "base", iou, preset="voc")
    wilson = make_run(tmp_path / "wilson", "15-5-ov", 1, "wilson", iou, prev=s0, preset="voc", val_set="all")
    mib = make_run(tmp_path / "mib", "15-5-ov", 1, "mib", iou, prev=s0, preset="voc")
    toy = make_run(tmp_path / "toy-wilson", "15-5-ov", 1, "wilson", iou, preset="toy")
    report = build_report([s0, wilson, mib, toy])
    rows = {(r.label, r.run.path.name): r for r in report.rows}
    assert rows[("base", "step0")].published == []  # no paper reports a step-0 row
    assert rows[("wilson (wilson)", "wilson")].published[0]["citation"].endswith("CVPR 2022, Table 1")
    cols = rows[("wilson (wilson)", "wilson")].published[0]["columns"]
    # WILSON Table 1, overlapped: 74.2 / 41.7 / 67.2 over 1-15 / 16-20 / 0-20
    assert cols["old"] == {"classes": "1-15", "group": "base", "paper": 74.2, "run": 70.0, "diff": -4.2}
    assert (cols["new"]["run"], cols["new"]["diff"]) == (40.0, -1.7)
    assert (cols["all"]["run"], cols["all"]["diff"]) == (63.81, -3.39)
    assert rows[("wilson (toy-wilson)", "toy-wilson")].published == []
    by_name = {p["name"]: p for p in rows[("mib", "mib")].published}
    assert set(by_name) == {"MiB⋆", "MiB (PLOP's re-run)", "MiB (the MiB paper's numbers)", "MiB"}
    plop = by_name["MiB (PLOP's re-run)"]["columns"]
    # PLOP's "0-15" counts background: (0.9 + 15 * 0.7) / 16
    assert plop["old"]["classes"] == "0-15" and plop["old"]["run"] == 71.25 and plop["old"]["diff"] == -5.12
    assert plop["avg"]["run"] is None  # a mean over the steps: not compared
    text = markdown_table(report)
    assert "Published results of the same method" in text
    assert "| 15-5-ov | 1 | wilson (wilson) | WILSON | 1-15 / 16-20 / 0-20 | 70.0 / 74.2 / -4.2 | 40.0 / 41.7 / -1.7 |" \
        in text and "| WILSON (CVPR 2022), Table 1 |" in text
    assert "MiB⋆ (val set all)" in text  # WILSON's numbers are on every val image, this run on seen
    assert build_report([s0, wilson], with_published=False).rows[1].published == []


# -- loss curves and the examples grid, from a trained toy run ---------------------------------------
@pytest.mark.slow
def test_loss_curve_and_examples_grid(base_run, toy_root, run_cli, tmp_path):
    import shutil

    bare = tmp_path / "no-losses"
    shutil.copytree(base_run, bare)
    (bare / "losses.csv").unlink()
    plots = tmp_path / "plots"
    r = run_cli("report", base_run, bare, "--plots", plots, "--examples", "3", "--data", toy_root, "--json")
    assert r.returncode == 0, r.stderr
    written = [Path(p).name for p in json.loads(r.stdout)["plots"]]
    assert "losses-voc-10-10-ov-step0-base-step0.png" in written and "examples.png" in written
    assert not any("no-losses" in name for name in written)
    assert sum("no losses.csv" in line for line in r.stderr.splitlines()) == 1
    for name in ("losses-voc-10-10-ov-step0-base-step0.png", "examples.png"):
        _assert_png(plots / name)
    with Image.open(plots / "examples.png") as img:
        assert img.size[0] > 4 * 150 and img.size[1] > 3 * 150  # 3 rows of image, truth and 2 runs
    bad = run_cli("report", base_run, "--examples", "3")
    assert bad.returncode == 2 and "--plots DIR and --data ROOT" in error_line(bad.stderr)


def _with_options(run: Path, **options) -> Path:
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["options"].update(options)
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_runs_that_differ_only_by_seed_are_one_group_with_mean_and_sample_std(tmp_path):
    from incseg_cli.stages.report import seed_groups

    s0 = make_run(tmp_path / "step0", "10-10-ov", 0, "base", {c: 0.6 for c in range(11)})
    for seed, old in ((0, 0.4), (1, 0.5), (2, 0.6)):
        iou = {0: 0.8} | {c: old for c in range(1, 11)} | {c: 0.3 for c in range(11, 21)}
        _with_options(make_run(tmp_path / f"mib-s{seed}", "10-10-ov", 1, "mib", iou, prev=s0), seed=seed, lr=1e-3,
                      out=str(tmp_path / f"mib-s{seed}"))
    other = {0: 0.8} | {c: 0.9 for c in range(1, 21)}
    _with_options(make_run(tmp_path / "mib-lr", "10-10-ov", 1, "mib", other, prev=s0), seed=0, lr=1e-2)
    groups = seed_groups(build_report([tmp_path / p for p in ("step0", "mib-s0", "mib-s1", "mib-s2", "mib-lr")]))
    assert len(groups) == 1  # another rate is another recipe; one run is no group
    g = groups[0]
    assert (g["method"], g["n"], g["seeds"]) == ("mib", 3, [0, 1, 2])
    assert g["miou"]["old"]["mean"] == pytest.approx(0.5) and g["miou"]["old"]["std"] == pytest.approx(0.1)
    assert g["miou"]["new"]["std"] == pytest.approx(0.0) and g["classes"]["5"]["mean"] == pytest.approx(0.5)


def test_runs_of_other_class_orders_join_the_group_beside_the_papers_row(tmp_path):
    """PLOP's way of reporting several orders: one group over orders and seeds; old/new are
    each run's own steps; the published row of the papers' order is kept beside."""
    from incseg_cli.stages.report import seed_groups

    made = []
    for order, seed, value in (("", 0, 0.5), ("", 1, 0.7), ("@plop-b", 0, 0.6), ("@random-3", 0, 0.2)):
        task = get_task("voc", f"15-5-ov{order}")
        s0 = make_run(tmp_path / f"s0{order}-{seed}", task.key, 0, "base", {c: 0.7 for c in task.steps[0]},
                      preset="voc")
        iou = {c: value for c in range(21)} | {c: value / 2 for c in task.steps[1]}
        made += [s0, _with_options(make_run(tmp_path / f"mib{order}-{seed}", task.key, 1, "mib", iou, prev=s0,
                                            preset="voc"), seed=seed, class_order=order[1:] or None)]
    groups = [g for g in seed_groups(build_report(made)) if g["step"] == 1]
    assert len(groups) == 1
    g = groups[0]
    assert g["task"] == "15-5-ov" and g["n"] == 4 and g["orders"] == ["papers", "papers", "plop-b", "random-3"]
    assert g["seeds"] == [0, 1, 0, 0]
    assert g["miou"]["new"]["mean"] == pytest.approx((0.25 + 0.35 + 0.3 + 0.1) / 4)
    assert g["classes"]["16"]["n"] == 4  # every run has seen every class at the last step
    assert "MiB" in {p["name"] for p in g["published"]}  # the papers' order only: a run of plop-b has none
    assert "| 15-5-ov | 1 | mib | 4 | papers,plop-b,random-3 |" in markdown_table(build_report(made))


def test_a_chain_gets_its_class_by_step_table_csv_and_plot(tmp_path, run_cli):
    s0 = make_run(tmp_path / "s0", "10-5-5-ov", 0, "base", {c: 0.7 for c in range(11)})
    s1 = make_run(tmp_path / "s1", "10-5-5-ov", 1, "mib", {c: 0.5 for c in range(16)}, prev=s0)
    s2 = make_run(tmp_path / "s2", "10-5-5-ov", 2, "mib", {c: 0.4 for c in range(16)} | {c: 0.2 for c in range(16, 21)},
                  prev=s1)
    r = run_cli("report", s0, s1, s2, "--tables", tmp_path / "tables", "--plots", tmp_path / "plots", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (chain,) = doc["forgetting"]
    assert chain["steps"] == [0, 1, 2] and chain["classes"]["3"]["iou"] == [0.7, 0.5, 0.4]
    assert chain["classes"]["18"]["iou"] == [None, None, 0.2]  # before its step: no value
    table = (tmp_path / "tables" / "forgetting-voc-10-5-5-ov-mib.csv").read_text().splitlines()
    assert table[0] == "label,name,step 0,step 1,step 2" and table[4] == "3,class3,0.700000,0.500000,0.400000"
    assert table[19] == "18,class18,,,0.200000"
    _assert_png(tmp_path / "plots" / "forgetting-voc-10-5-5-ov-mib.png")
    assert doc["groups"] == [] and not (tmp_path / "tables" / "groups.csv").exists()
