"""fleetop: a reconciling operator for fleet clusters over etcd."""

__version__ = "0.1.0"
