"""The shipped `builtin` policy: small enough to ship, loads on its own, and drives after install."""

import pytest

from worlddrive.cli import main
from worlddrive.eval.drivers import BUILTIN, make_driver

pytestmark = pytest.mark.usefixtures("one_thread")


def test_builtin_checkpoint_is_shipped_with_the_command_that_made_it():
    weights = BUILTIN / "model.safetensors"
    assert weights.stat().st_size <= 20 * 2**20
    assert "worlddrive train" in (BUILTIN / "COMMAND.md").read_text()
    driver = make_driver("builtin")
    assert driver.name == "builtin" and driver.policy.config.wm_heads


def test_drive_builtin_writes_a_gif(tmp_path, capsys):
    gif = tmp_path / "builtin.gif"
    assert main(["drive", "--policy", "builtin", "--family", "straight", "--seed", "1000001", "--out", str(gif)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ds=") and gif.stat().st_size > 10_000
