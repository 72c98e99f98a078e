"""Every shell command block in README.md and docs/*.md runs in a test or says
why it cannot run here (tests/docs/docblocks.py describes the markers)."""

from __future__ import annotations

from docs.docblocks import ROOT, all_blocks


def test_every_command_block_is_run_or_marked() -> None:
    unmarked = [f"{b.where}: {b.first_line[:60]}" for b in all_blocks() if b.marker is None]
    assert unmarked == [], (
        "command blocks without a <!-- doc-test: runs in … --> or "
        "<!-- doc-test: not runnable: REASON --> marker before them:\n" + "\n".join(unmarked)
    )


def test_a_not_runnable_block_says_why() -> None:
    bare = [b.where for b in all_blocks() if b.marker == "not runnable:" and len(b.detail) < 8]
    assert bare == []


def test_a_block_that_runs_is_run_by_the_test_it_names() -> None:
    """The named test file exists and holds the block's first command, so that
    removing the test or changing the block without it fails here."""
    wrong = []
    for block in all_blocks():
        if block.marker != "runs in":
            continue
        test = ROOT / block.detail
        commands = block.commands()
        if not test.is_file() or not commands or commands[0] not in test.read_text():
            wrong.append(f"{block.where}: {block.detail}")
    assert wrong == []
