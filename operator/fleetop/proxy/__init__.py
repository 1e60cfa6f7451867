"""The proxy pipeline: render a config from specs and registrations, publish it, apply it safely.

``render`` (pure: specs and addresses in, text and hash out) and ``coalesce`` (consul-template's
quiescence) run in the operator; ``apply`` (stage, check, rename, reload) and ``agent`` run next to
each nginx or HAProxy. Only ``agent`` and ``cli`` do etcd I/O.
"""
