"""The proxy kind: ``proxies/<name>`` keys. Renders a proxy's config from its routed services'
registrations, publishes it, runs the units of a managed proxy (``plan``, ``units``) and reports
(``status``), from the shared caches and its own (``cache``). Imports the runtime and the shared
vocabulary, never the service kind."""
