"""Closed-loop control on the simulated reach task: observers, episodes, the gymnasium env, RL training."""
