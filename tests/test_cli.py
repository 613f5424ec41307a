"""Tests of the spice-learn command line (``cluster`` on a temporary folder)."""

import csv

import numpy as np
import pytest
from PIL import Image

from spice_learn.cli import build_parser, main


def _make_folder(tmp_path):
    """Two kinds of generated images (bright left / bright right), a corrupt PNG and a
    text file, in nested folders."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(24):
        x = rng.integers(0, 40, (12, 12, 3))
        x[:, :6] += 200 if i % 2 == 0 else 0
        x[:, 6:] += 0 if i % 2 == 0 else 200
        folder = root if i < 12 else root / "sub"
        Image.fromarray(x.clip(0, 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("not an image")
    return root


FAST = ["--pretrain-epochs", "1", "--seed", "0"]


def test_cluster_writes_csv_overview_and_folders(tmp_path, capsys):
    root = _make_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["cluster", str(root), "-k", "2", "--out", str(out), "--copy", *FAST]) == 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.err  # reported, not fatal
    with open(out / "clusters.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24
    assert not any("broken" in r["path"] or "notes" in r["path"] for r in rows)
    assert {r["cluster"] for r in rows} <= {"0", "1"}
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)
    assert {r["reliable"] for r in rows} <= {"0", "1"}
    with open(out / "skipped.csv") as f:
        skipped = list(csv.DictReader(f))
    assert [s["path"].endswith("broken.png") for s in skipped] == [True]
    overview = Image.open(out / "overview.png")
    assert overview.size[0] > 200 and overview.size[1] > 100
    copied = sorted(p.name for p in out.glob("cluster_*/*.png"))
    assert len(copied) == 24


def test_cluster_links_instead_of_copying(tmp_path):
    root = _make_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["cluster", str(root), "-k", "2", "--out", str(out), "--link", *FAST]) == 0
    links = list(out.glob("cluster_*/*.png"))
    assert len(links) == 24 and all(p.is_symlink() for p in links)


def test_cluster_missing_folder_fails_cleanly(tmp_path, capsys):
    assert main(["cluster", str(tmp_path / "nope"), "-k", "2", *FAST]) == 2
    assert "nope" in capsys.readouterr().err


def test_cluster_too_few_images(tmp_path, capsys):
    root = tmp_path / "few"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    assert main(["cluster", str(root), "-k", "3", *FAST]) == 2
    assert "need at least 3" in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cluster", "--help"])
    text = capsys.readouterr().out
    for option in ("--n-clusters", "--out", "--copy", "--link", "--backbone", "--weights",
                   "--pretrain-epochs", "--pretrain-minutes", "--semi", "--seed", "--verbose"):
        assert option in text


def test_rerun_into_the_same_output_inside_the_folder(tmp_path):
    root = _make_folder(tmp_path)
    out = root / "clusters"  # the output lives inside the clustered folder
    for _ in range(2):
        assert main(["cluster", str(root), "-k", "2", "--out", str(out), "--link", *FAST]) == 0
    with open(out / "clusters.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24  # the first run's overview and links were not clustered
    assert len(list(out.glob("cluster_*/*.png"))) == 24  # stale folders were replaced


@pytest.mark.parametrize("argv,tty,expected", [
    ([], True, 1), ([], False, 0), (["--quiet"], True, 0), (["-q"], False, 0),
    (["--verbose", "2"], False, 2), (["--verbose", "0"], True, 0),
])
def test_progress_by_default_on_a_terminal(monkeypatch, argv, tty, expected):
    from spice_learn import cli

    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: tty)
    args = build_parser().parse_args(["demo", *argv])
    assert cli._verbosity(args) == expected


def test_quiet_and_verbose_exclude_each_other():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--quiet", "--verbose", "1"])


def test_cluster_shows_the_plan_and_progress_when_asked(tmp_path, capsys):
    root = _make_folder(tmp_path)
    assert main(["cluster", str(root), "-k", "2", "--out", str(tmp_path / "o"), *FAST,
                 "--verbose", "1"]) == 0
    err = capsys.readouterr().err
    assert "plan: spice_convnet4" in err and "pretraining (SimCLR)" in err


def _pairs_kept_together(out):
    """Pairs of same-kind images in one cluster, all same-kind pairs, and the clusters."""
    with open(out / "clusters.csv") as f:
        rows = list(csv.DictReader(f))
    side = {r["path"]: int(r["path"][-6:-4]) % 2 for r in rows}  # bright left / right
    clusters = {r["path"]: r["cluster"] for r in rows}
    agree = sum(clusters[p] == clusters[q] for p in side for q in side if side[p] == side[q])
    total = sum(1 for p in side for q in side if side[p] == side[q])
    return agree, total, set(clusters.values())


def test_cluster_separates_obviously_different_images(tmp_path):
    root = _make_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["cluster", str(root), "-k", "2", "--out", str(out), *FAST, "-q"]) == 0
    agree, total, clusters = _pairs_kept_together(out)
    assert agree == total  # each kind in one cluster
    assert len(clusters) == 2


def test_cluster_auto_finds_the_two_kinds(tmp_path, capsys):
    root = _make_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["cluster", str(root), "--n-clusters", "auto", "--out", str(out), *FAST,
                 "-q"]) == 0
    printed = capsys.readouterr().out
    assert "chose 2 clusters" in printed and "silhouette" in printed
    agree, total, clusters = _pairs_kept_together(out)
    assert agree == total and len(clusters) == 2


def test_cluster_rejects_a_bad_n_clusters(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["cluster", str(tmp_path), "--n-clusters", "many"])
    assert "expected an int or 'auto'" in capsys.readouterr().err