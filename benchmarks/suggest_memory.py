"""Peak memory of ``diffclip suggest`` as the scene grows (its tiles keep it bounded).

The same set-up as ``benchmarks/memory.py`` (a ``tiny``-preset classifier for 144 HSI bands +
1 LiDAR channel, one real source tile repeated by a VRT mosaic over scenes of any size), and
for each size ``diffclip suggest`` runs through the real command in a fresh process, which
reports its own peak RSS (``VmHWM``) at the end. Target (issue 25): the 3000 x 1000 scene
within 1.3x of the 300 x 100 one.

    OMP_NUM_THREADS=1 python benchmarks/suggest_memory.py --sizes 300x100 3000x1000 \\
        --strategy spread -n 50
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.memory import RATIO_TARGET, build_model, make_source_tile, write_mosaic_vrt

_CHILD = """
import sys
from pathlib import Path
from diffclip_cli.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
        print("PEAK_KIB", int(line.split()[1]), "CODE", code, file=sys.stderr)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["300x100", "3000x1000"])
    ap.add_argument("--strategy", default="cluster")
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--hsi-bands", type=int, default=144)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_model(work, args.hsi_bands, args.seed)
        tile = make_source_tile(work, 512, args.hsi_bands, args.seed)
        rows = []
        for size in args.sizes:
            w, h = (int(v) for v in size.lower().split("x"))
            hsi = write_mosaic_vrt(tile.hsi, work / f"hsi_{size}.vrt", w, h)
            lidar = write_mosaic_vrt(tile.lidar, work / f"lidar_{size}.vrt", w, h)
            out = work / f"next_{size}.gpkg"
            tic = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", _CHILD, "suggest", str(hsi), str(lidar),
                                "--model", str(model), "-n", str(args.n), "--strategy",
                                args.strategy, "-o", str(out), "-q"],
                               capture_output=True, text=True)
            wall = time.perf_counter() - tic
            peak = next((int(line.split()[1]) for line in r.stderr.splitlines()
                         if line.startswith("PEAK_KIB")), -1)
            ok = r.returncode == 0 and out.exists()
            rows.append({"size": size, "pixels": w * h, "peak_mib": round(peak / 1024, 1),
                         "seconds": round(wall, 1), "ok": ok})
            print(json.dumps(rows[-1]), flush=True)
            if not ok:
                print(r.stderr[-2000:], file=sys.stderr)
        if len(rows) >= 2 and rows[0]["peak_mib"] > 0:
            ratio = rows[-1]["peak_mib"] / rows[0]["peak_mib"]
            print(f"peak ratio {rows[-1]['size']} / {rows[0]['size']}: {ratio:.2f} "
                  f"(target <= {RATIO_TARGET})")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
