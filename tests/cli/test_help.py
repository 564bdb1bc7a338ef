"""What `mmkd --help` and `mmkd distill --help` show a newcomer, through the console script."""

from __future__ import annotations

from mmkd.cli.distill import SECTIONS, distill_cmd


def test_top_level_help_lists_every_command(run_mmkd):
    out = run_mmkd("--help", timeout=60)
    assert out.returncode == 0, out.stderr
    commands = out.stdout.split("Commands:")[1]
    for name in ("teachers", "extract", "store", "distill", "eval", "demo"):
        assert f"  {name} " in commands, name


def test_distill_help_groups_every_option_and_marks_required(run_mmkd):
    out = run_mmkd("distill", "--help", timeout=60)
    assert out.returncode == 0, out.stderr
    for title in SECTIONS:
        assert f"\n{title}:\n" in out.stdout, title
    other = out.stdout.split("\nOther:\n")[1]
    assert other.split()[:1] == ["-h,"] and "--" not in other.replace("--help", ""), other  # only --help is left
    placed = {n for names in SECTIONS.values() for n in names}
    assert {p.name for p in distill_cmd.params} == placed
    required = out.stdout.split("\nRequired (here or in the --run entry):\n")[1].split("\n\n")[0]
    assert all(f"--{n} " in required for n in ("store", "student", "out")) and required.count("[required]") == 3
