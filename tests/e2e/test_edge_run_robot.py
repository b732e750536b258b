"""edge-run's robot path (no --sim): a serial port and a saved goal file, here served by the
simulated ESP32 in its own process, exactly as a robot's ESP32 would be."""

from __future__ import annotations

from pathlib import Path

from conftest import requires_native
from edge.config import load_config
from edge.goals import save_goal
from edge.recorder import read_flight_log
from edge.run import main
from edge.simrobot import SimRobot

pytestmark = requires_native


def test_robot_run_on_a_serial_port_with_a_saved_goal(random_bundle: Path, tmp_path: Path) -> None:
    """`edge-run --port PTY --goal FILE` connects, configures the controller, plans toward the
    saved goal with odometry from the encoder counts (starting at robot.initial_pose), drives
    the robot (its true pose moves), records the flight log, and exits 1 when --duration ends
    before the goal."""
    with SimRobot(load_config(None, [{"sim": {"enabled": True}}]), seed=11) as sim:
        goal = save_goal(tmp_path / "goals" / "other_room", sim.goal_observation())
        start = sim.true_pose()
        x, y, th = sim.start_pose
        rc = main(["--device", "cpu", "--port", sim.port, "--goal", str(goal), "--bundle", str(random_bundle),
                   "--duration", "2", "--status", "off", "--out", str(tmp_path / "runs"),
                   "--set", f"robot.initial_pose=[{x}, {y}, {th}]", "--set", "confidence.threshold=0",
                   "--set", f"robot.ticks_per_rev={sim.ticks_per_rev}"])
        end = sim.true_pose()
    assert rc == 1
    (mcap,) = (tmp_path / "runs").glob("*/flight.mcap")
    log = read_flight_log(mcap)
    assert log.complete and len(log.messages["/obs"]) >= 20
    assert "/true_pose" not in log.messages  # no ground truth on a robot
    first = log.messages["/obs"][0]["pose"]
    assert abs(first[0] - x) < 0.02 and abs(first[1] - y) < 0.02  # odometry starts at initial_pose
    assert log.messages["/goal"][0]["pose"][:2] == list(sim.goal_pose()[:2])
    moved = ((end[0] - start[0]) ** 2 + (end[1] - start[1]) ** 2) ** 0.5
    assert moved > 0.01
    last = log.messages["/obs"][-1]["pose"]
    assert ((last[0] - end[0]) ** 2 + (last[1] - end[1]) ** 2) ** 0.5 < 0.1  # odometry tracks the body
