"""fleetop node: an embedded, fleet-compatible engine (API v1, scheduler, supervised units) for one host."""
