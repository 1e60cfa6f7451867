"""fleet's API v1: the unit model shared by the client, the planner and ``fleetop node``."""
