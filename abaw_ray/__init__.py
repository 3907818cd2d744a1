"""abaw-ray: Aff-Wild2 to ABAW submissions on Ray.

Data flows one way: data -> features -> trial -> search -> ensemble -> submission.
"""

__version__ = "0.1.0"
