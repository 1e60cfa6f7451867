"""The generic runtime (controller-runtime's ``pkg/``): settings, the manager and its task group, the
informers, the work queue, leader election, the executor, health and metrics, and the reconcile
contract. It names no kind: the operator's wiring (:mod:`fleetop.controller.operator`) gives the
manager its reconcilers."""
