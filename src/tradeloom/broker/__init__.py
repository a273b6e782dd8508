"""The broker layer: the ``BrokerAdapter`` port, its adapters, and the gateway that bridges
broker callback threads to the event loop."""
