"""One module per phase (and, for Progressing, per strategy), each with the same two entry points:

- `step(run)`: issue what the phase does next;
- `apply(run, result)`: take in the results of the actions it issued.

They never import one another (an import contract keeps them independent): a phase moves the rollout on
through `core.transitions`, and the engine dispatches to the phase entered within the same decision.
"""
