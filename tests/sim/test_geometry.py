"""Geometry helpers on known inputs."""

import numpy as np

from worlddrive.sim.geometry import distance_along


def test_distance_along_goes_through_each_waypoint_from_the_origin():
    bent = np.array([[3.0, 4.0, 0.1], [6.0, 8.0, 0.2], [6.0, 8.0, 0.2]])  # 5 m, 5 m more, then standing
    assert distance_along(bent).tolist() == [5.0, 10.0, 10.0]
    batch = np.stack([bent, -bent])  # (B, T, 3): the direction does not matter
    assert distance_along(batch).tolist() == [[5.0, 10.0, 10.0]] * 2
