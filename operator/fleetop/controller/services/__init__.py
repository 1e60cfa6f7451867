"""The service kind: ``services/<name>`` keys. A pure planner (``planner`` and the modules it reads:
``instances``, ``readiness``, ``rollout``, ``restarts``, ``rollback``, ``machineloss``, ``report``,
``limits``, ``unitrender``) and the reconciler that feeds it from the caches and hands its plan to the
executor. Imports the runtime and the shared vocabulary, never the proxy kind."""
