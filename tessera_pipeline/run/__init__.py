"""Layer 6: the Ray run. Plan a region's tiles, record the run in the store, place long-lived actors per
hardware class, drive a bounded window of tiles through them, retry what is transient, record what is
permanent, and report progress. `launch.start` / `launch.resume` run it; `status.run_status` reads it back.
"""
