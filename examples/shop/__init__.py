"""The shop example: an order book fed by the ``orders`` topic and a shipment tracker fed by ``shipments``.

    epistle run --app examples.shop.app:register            # from the repository root

``services`` holds the in-memory dependencies, ``handlers`` the two handlers (dependencies injected in
their constructors), ``app`` the wiring. ``make demo`` (``examples.demo``) drives it with a realistic mix of
good, flaky and broken records.
"""
