"""Ours against upstream on this CPU, same tile, same threads, bf16: the ratio `plan`'s CPU projections scale by.

Upstream is `infer_v1_1.py` of the rival repository with the one line the seeds added to run bf16 on a
CPU (autocast on `cpu` where it has it on `cuda` only), its packs at 256 pixels (the seeds' best on a
CPU) and its loader in-process (the same cores do both, as ours). Each round runs upstream's process
(its encode loop, cold, as its users run it) and ours in a fresh encoder (the first, cold encode, and a
second, steady one), alternately, so both see the same minutes of a shared host.

    python scripts/cpu_vs_upstream.py RIVAL_DIR [--size 40x40] [--rounds 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import tempfile
from pathlib import Path

from tessera_pipeline.bench.gpu_bench import prepare_inputs, run_upstream, steady_state

_AMP = re.compile(r'if bool\(config.get\("apply_amp", True\)\) and device.type == "cuda":')


def patched_upstream(rival: Path, workdir: Path) -> Path:
    """A copy of upstream with CPU bf16 autocast (the seeds' one line), packs of 256 and an in-process loader."""
    dest = workdir / "rival"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(rival, dest)
    script = next(dest.rglob("infer_v1_1.py"))
    text = script.read_text()
    if not _AMP.search(text):
        raise SystemExit(f"{script}: upstream's autocast line has changed; not patching")
    text = _AMP.sub('if bool(config.get("apply_amp", True)) and device.type == "cpu":\n'
                    '        amp_ctx = torch.amp.autocast("cpu", dtype=torch.bfloat16)\n'
                    '    elif bool(config.get("apply_amp", True)) and device.type == "cuda":', text)
    script.write_text(text)
    config = script.parent.parent / "configs" / "v1_1_infer_config.py"
    config.write_text(config.read_text() + '\nconfig["batch_size"] = 256\nconfig["num_workers"] = 0\n')
    return script


def main() -> None:
    """Alternate upstream and ours on one synthetic tile; print each round and the ratio ours/upstream per pixel."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("rival", type=Path)
    p.add_argument("--size", default="40x40")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cpu_vs_upstream_"))
    ckpt, tile_dir = prepare_inputs(workdir, (h, w))
    script = patched_upstream(args.rival, workdir)
    rounds = []
    for k in range(args.rounds):
        up = run_upstream(script, ckpt, tile_dir, workdir / f"up{k}", workdir / f"up{k}.log")
        _, times, _ = steady_state(ckpt, tile_dir, precision="bf16", device="cpu", batch_size=None, tiles=2)
        row = {"round": k + 1, "upstream_loop_s": up["encode_loop_s"], "upstream_process_s": up["process_wall_s"],
               "ours_first_s": times[0], "ours_steady_s": times[1],
               "ratio_first": times[0] / up["encode_loop_s"], "ratio_steady": times[1] / up["encode_loop_s"]}
        print(json.dumps(row), flush=True)
        rounds.append(row)
    firsts = [r["ratio_first"] for r in rounds]
    print(json.dumps({"pixels": h * w, "rounds": len(rounds), "ratio_first_mean": statistics.mean(firsts),
                      "ratio_first_range": [min(firsts), max(firsts)],
                      "ratio_steady_mean": statistics.mean(r["ratio_steady"] for r in rounds)}))


if __name__ == "__main__":
    main()
