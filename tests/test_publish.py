"""The output guard (flanmix.publish): what --overwrite may replace, and what it never touches."""

from __future__ import annotations

import os
import stat

import pytest

from flanmix.publish import (
    OutputError,
    check_out,
    claim,
    clean_stale,
    lock,
    staging,
    write_marker,
)


def _export_like(out):
    """A folder published the way exports are: staged, marked, its files listed."""
    with staging(out) as tmp:
        (tmp / "train.jsonl").write_text("{}\n")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("a")
        write_marker(tmp, "export")


def test_leftovers_are_matched_by_exact_name_never_by_pattern(tmp_path):
    """An output named '*' must not match (and remove, or move) the user's hidden folders."""
    for name in (".thesis.old-20231201", ".notes.old-5000000", ".x.tmp-4000000"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text("keep")
    out = tmp_path / "*"
    assert clean_stale(out) == []
    with staging(out) as tmp:
        (tmp / "f").write_text("x")
    for name in (".thesis.old-20231201", ".notes.old-5000000", ".x.tmp-4000000"):
        assert (tmp_path / name / "mine.txt").read_text() == "keep"


def test_a_moved_aside_folder_is_removed_only_if_flanmix_made_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    theirs = tmp_path / ".out.old-4000000"  # a dead pid, but not a folder flanmix made
    theirs.mkdir()
    (theirs / "paper.tex").write_text("keep")
    clean_stale(out)
    assert (theirs / "paper.tex").read_text() == "keep"


def test_overwrite_refuses_a_flanmix_folder_holding_files_flanmix_did_not_write(tmp_path):
    out = tmp_path / "exp"
    _export_like(out)
    check_out(out, overwrite=True)  # only flanmix's files: may be replaced
    (out / "notes.txt").write_text("mine")
    (out / "sub" / "b.txt").write_text("mine too")
    with pytest.raises(
        OutputError, match=r"holds files flanmix did not write \(notes.txt, sub/b.txt\)"
    ):
        check_out(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_folder_with_run_like_files_is_not_taken_for_a_flanmix_run(tmp_path):
    exp = tmp_path / "myexp"
    exp.mkdir()
    (exp / "config.yaml").write_text("lr: 0.1\n")
    (exp / "metrics.jsonl").write_text("{}\n")
    (exp / "paper.tex").write_text("draft")
    with pytest.raises(OutputError, match="not a folder flanmix made"):
        check_out(exp, overwrite=True)


def test_a_link_to_a_flanmix_folder_replaces_the_folder_and_leaves_the_link(tmp_path):
    real = tmp_path / "real"
    _export_like(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    with claim(link, overwrite=True) as out, staging(out) as tmp:
        assert out == real
        (tmp / "new.txt").write_text("new")
        write_marker(tmp, "export")
    assert (
        link.is_symlink() and (link / "new.txt").is_file() and not (real / "train.jsonl").exists()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no leftovers


def test_a_replaced_folder_keeps_its_permissions(tmp_path):
    out = tmp_path / "priv"
    out.mkdir(mode=0o700)
    os.chmod(out, 0o2770)
    check_out(out, overwrite=True)  # empty: nothing to lose
    with staging(out) as tmp:
        (tmp / "f").write_text("x")
    assert stat.S_IMODE(out.stat().st_mode) == 0o2770


def test_a_lock_file_flanmix_did_not_write_is_left(tmp_path):
    mine = tmp_path / ".out.lock"
    mine.write_text("mine\n")
    with lock(tmp_path / "out"):
        pass
    assert mine.read_text() == "mine\n"
    with lock(tmp_path / "new"):  # its own lock file is removed
        assert (tmp_path / ".new.lock").is_file()
    assert not (tmp_path / ".new.lock").exists()


def test_outputs_inside_another_flanmix_output_are_refused(tmp_path):
    out = tmp_path / "exp"
    _export_like(out)
    with pytest.raises(OutputError, match="inside .*a flanmix export"):
        check_out(out / "lm", overwrite=False)


def test_empty_paths_and_broken_links_get_their_own_errors(tmp_path):
    with pytest.raises(OutputError, match="path is empty"):
        check_out("", overwrite=False)
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "gone")
    with pytest.raises(OutputError, match="broken link"):
        check_out(broken, overwrite=True)


def test_the_demo_folder_is_new_empty_or_an_earlier_demo(tmp_path):
    """``flanmix demo --out DIR`` replaced DIR/mixture, DIR/train and DIR/eval in any folder."""
    from flanmix.demo import claim_demo

    proj = tmp_path / "proj"
    (proj / "train").mkdir(parents=True)
    (proj / "train" / "config.yaml").write_text("lr: 1\n")
    (proj / "train" / "metrics.jsonl").write_text("{}\n")
    (proj / "thesis.tex").write_text("mine")
    with pytest.raises(OutputError, match="not a folder flanmix made"):
        claim_demo(proj)
    assert sorted(p.name for p in proj.rglob("*")) == [
        "config.yaml", "metrics.jsonl", "thesis.tex", "train"
    ]  # fmt: skip
    exp = tmp_path / "exp"
    _export_like(exp)
    with pytest.raises(OutputError, match="flanmix export as the demo folder"):
        claim_demo(exp)
    fresh = claim_demo(tmp_path / "new")
    assert (fresh / ".flanmix").is_file() and claim_demo(fresh) == fresh  # its own: again
    (fresh / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"did not write \(notes.txt\)"):
        claim_demo(fresh)
    (fresh / "notes.txt").unlink()
    _export_like(fresh / "train")
    (fresh / "train" / "results_final.csv").write_text("mine")  # inside a part: before any step
    with pytest.raises(OutputError, match=r"did not write \(results_final.csv\)"):
        claim_demo(fresh)
    earlier = tmp_path / "earlier"  # a demo of a flanmix that did not mark the folder
    _export_like(earlier / "mixture")
    assert claim_demo(earlier) == earlier and (earlier / ".flanmix").is_file()


def test_sources_fixture_writes_a_new_stand_in_hub_only(tmp_path, capsys):
    """``sources fixture -o DIR`` wrote into any folder, replacing files at its repository paths."""
    from flanmix.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["sources", "fixture", "piqa", "-o", str(mine)]) == 2
    assert "not a folder flanmix made" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    hub = tmp_path / "hub"
    assert main(["sources", "fixture", "piqa", "-o", str(hub)]) == 0
    assert main(["sources", "fixture", "piqa", "-o", str(hub)]) == 2  # exists
    assert main(["sources", "fixture", "piqa", "rte", "-o", str(hub), "--overwrite"]) == 0
    assert "wrote 2 repository folder(s)" in capsys.readouterr().out


def test_a_bad_scratch_folder_is_one_located_line(tmp_path, capsys):
    from flanmix.catalog import DEFAULT_ROOT
    from flanmix.cli import main

    (tmp_path / "afile").write_text("x")
    spec = str(DEFAULT_ROOT / "mixtures" / "small_offline.yaml")
    for scratch, why in (("afile", "is a file"), ("afile/x", "cannot make the scratch folder")):
        argv = ["compile", spec, "-o", str(tmp_path / "o"), "--offline"]
        assert main([*argv, "--scratch", str(tmp_path / scratch)]) == 2
        err = capsys.readouterr().err
        assert why in err and "field=executor.scratch" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
