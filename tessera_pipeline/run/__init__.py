"""Layer 6: the Ray run. Plan a region's tiles, take the store's lease, record the run in the store, place
long-lived actors per hardware class (per node, or asked of Ray by demand), drive a bounded window of tiles
through them, charge each failure to its cause, and report progress. `session.start` / `session.resume` run
it; `status.run_status` reads it back.
"""
