"""grandhotel: every service request gets its own supervised butler.

A Trio server in which each ticket has one task holding its live state in
memory, talking over memory channels to the worker doing the job and to the
guests watching over WebSockets, with PostgreSQL as the durable safe.
"""

__version__ = "0.1.0"
