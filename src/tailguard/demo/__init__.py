"""The main job: the trading demo and its report."""
