"""The ``fleetop`` command line: kubectl-like verbs over the specs in etcd."""
