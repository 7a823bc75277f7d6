"""crewbatch: a four-role CrewAI crew over a support-ticket queue, with a run ledger."""

__version__ = "0.1.0"
