"""dutybridge composed with its sandbox: ``dutybridge demo`` and the harness that the demo,
the tests and the benchmarks share to start the daemon in-process. The core imports none of it.
"""
