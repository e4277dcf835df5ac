"""The pure core: rules, lead state and scoring. No Kafka, Redis, Faust or clock in here.

The same functions run in the worker, serve as the oracle in the integration tests and drive
replay, so there is one implementation of the rules.
"""
