"""The SimPy model of the federation. Read in this order: ``run.py`` (wiring, the clock),
``gateway.py`` (admission, routing, retries, records), ``replica.py`` (the vLLM engine model).
``backend.py`` holds router-side state per backend; ``faults.py`` turns faults into timed changes.
The simulator never decides routing itself: it builds a ``ClusterView`` and asks the policy."""

from publicai_lab.sim.run import SimResult, simulate

__all__ = ["simulate", "SimResult"]
