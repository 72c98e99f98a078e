from __future__ import annotations

from pathlib import Path

from atoll.demo.story import runtime_dir


def test_sockets_go_where_their_paths_fit() -> None:
    assert runtime_dir(Path("/tmp/demo")) == Path("/tmp/demo/run")
    deep = Path("/tmp/pytest-of-root/pytest-12/test_the_demo_tells_0/tmp/atoll-demo-abcdefgh")
    chosen = runtime_dir(deep)
    assert chosen.parent == Path("/run")
    assert chosen.name.startswith("atoll-demo-")
    assert chosen == runtime_dir(deep)  # the same for the same directory: --stop finds it
    # The supervisor's control socket fits in a Unix socket address (107 bytes).
    assert len(str(chosen / "dev1" / "control.sock")) < 108
