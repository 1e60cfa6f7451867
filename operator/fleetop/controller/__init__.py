"""The reconciler: a pure planner that turns (spec, observed fleet world) into actions and status, and
the runtime around it (work queue, leader election, executor). Decisions live in pure functions so
they can be tested with large tables and property tests; I/O stays at the edges."""
