"""Planners over a policy's decision: imagination (imagine.py) lets the world model pick among candidate plans."""
