"""Service discovery: how instances get into ``/services/<service>/<id>`` and out again.

A sidekick (``fleetop register``) checks its instance and keeps a lease-bound key while the instance
is healthy, so a dead instance or a dead sidekick disappears from etcd within the lease TTL instead of
lingering until someone notices. Readers of those keys (the operator, proxies, confd templates) only
ever see addresses that were healthy a moment ago.
"""
