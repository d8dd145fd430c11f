"""The driving world: SUMO traffic, our ego, scenario families, the expert, renderers and the gymnasium env."""

import gymnasium as gym

if "worlddrive/Drive-v0" not in gym.registry:
    gym.register(id="worlddrive/Drive-v0", entry_point="worlddrive.sim.env:DriveEnv")
