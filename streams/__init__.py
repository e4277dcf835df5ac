"""leadflow: lead scoring, MQL handoff and sales SLA watching on Kafka and Redis."""

__version__ = "0.1.0"
