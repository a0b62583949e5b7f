"""`qgen report` end to end on the hand-written fixture: every scenario's files, the embedded figures, and the
one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from analysis_fixture import write_fixture
from qgen.analysis.report import Options, build
from qgen.errors import QgenError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = write_fixture(tmp_path_factory.mktemp("fixture"))
    out = tmp_path_factory.mktemp("report")
    build(Options(roots=[str(root)], out_dir=out, scenarios=("s1", "s2"), n_boot=500))
    return root, out


def test_report_files(built):
    _, out = built
    s2 = (out / "s2.md").read_text()
    assert "Input: 6 jobs: eval suites matching 's2_*'" in s2
    # metric, setting, wins, ties, significant, ID best, no difference / too few items / too few seeds, median MDE,
    # gap; both cells have 2 seeds, so the seed-level test decides: test a's claim is "too few seeds"
    assert "| acc | m | rtn | w4a16 | 128 / 512 | 2/2 | 0 | 1 / 0 | 2/2 | 1 | 0 / 0 / 1 | 0.8258 | +0.4375 |" in s2
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "s2_fam_m_acc_heatmap.png" in figs and "s1_radar_m.png" in figs
    for name in figs:
        assert (out / "figures" / name).stat().st_size > 5000  # a rendered image, not an empty file
        assert f"figures/{name}" in (out / ("s1.md" if name.startswith("s1") else "s2.md")).read_text()
    for stem in ("s1_values", "s1_change", "s1_families", "s1_power", "s2_wins", "s2_claims"):
        assert (out / "tables" / f"{stem}.md").exists() and (out / "tables" / f"{stem}.tex").exists()
        assert (out / "csv" / f"{stem}.csv").exists()
    csv = (out / "csv" / "s2_claims.csv").read_text().splitlines()
    assert len(csv) == 1 + 2  # two test sets, each with one OOD calibration (acc; ppl/wiki is not a member)


def test_s3_without_groups_uses_the_suites_tasks(tmp_path):
    root = write_fixture(tmp_path / "runs", suite="s3_subjects", groups=None)
    build(Options(roots=[str(root)], out_dir=tmp_path / "r", scenarios=("s3",), n_boot=200, figures=False))
    page = (tmp_path / "r" / "s3.md").read_text()
    assert "subjects: ID —, members a, b" in page and "**0.625 ± 0.177 [n=4]**" in page


def test_cli_errors_are_one_line(tmp_path, built):
    root, _ = built
    cases = [([str(tmp_path / "missing")], "does not exist"),
             ([str(tmp_path)], "no completed results.json"),
             ([str(root), "--groups", "f: {members: [zz]}", "--scenario", "s2"], "none of the groups' members"),
             ([str(root), "--scenario", "s2", "--suite", "nope*"], "no completed job selected"),
             ([str(root), "--metric", "f1"], "score 'f1' is not a metric")]
    for args, message in cases:
        r = subprocess.run([sys.executable, "-m", "qgen.cli", "report", *args, "--out", str(tmp_path / "r")],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("qgen: error")]
        assert len(lines) == 1 and message in lines[0], r.stderr


def test_explicit_groups_override_recorded_ones(tmp_path, built):
    root, _ = built
    groups = tmp_path / "g.yaml"
    groups.write_text(json.dumps({"groups": {"only_b": {"in_distribution": "b", "members": ["b"]}}}))
    from qgen.analysis import groups as groups_mod

    build(Options(roots=[str(root)], out_dir=tmp_path / "r", scenarios=("s2",), groups=groups_mod.parse(str(groups)),
                  n_boot=200, figures=False))
    page = (tmp_path / "r" / "s2.md").read_text()
    assert "only_b: ID b, members b" in page and "| all | all | all | all | 1/1 |" in page
    assert "s2_fam" not in page


def test_unknown_scenario():
    with pytest.raises(QgenError, match="unknown scenario"):
        build(Options(roots=["."], scenarios=("s9",)))


def test_ablation_over_calibration_size(tmp_path):
    from analysis_fixture import write_ablation

    root = write_ablation(tmp_path / "runs")
    build(Options(roots=[str(root)], out_dir=tmp_path / "r", scenarios=("ablation",), n_boot=200))
    page = (tmp_path / "r" / "ablation.md").read_text()
    assert "| n_samples | a (ID) | b | ppl/wiki |" in page
    assert "| 1 | **0.250 ± 0.000** | 0.125 ± 0.000 |" in page
    assert "| 8 | **0.625 ± 0.177** | 0.500 ± 0.000 |" in page
    assert "| FP | 0.750 | 0.500 | 10.000 |" in page  # the unquantized model on the same items
    assert (tmp_path / "r" / "figures" / "ablation_n_samples_m_rtn_w4a16_a.png").stat().st_size > 5000
    assert "ablation_seq_len" not in page  # seq_len was not varied
