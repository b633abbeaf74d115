"""Write a labelled .npz (arrays x and y) as the raw files digits_demo reads.

    python export_test_data.py examples/models/digits_test.npz OUT_DIR
    -> OUT_DIR/inputs.f32 (float32, C order) and OUT_DIR/labels.u8 (one byte per sample)
"""
import sys
from pathlib import Path

import numpy as np


def main(npz: str, out_dir: str) -> None:
    data = np.load(npz)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(data["x"], dtype=np.float32).tofile(out / "inputs.f32")
    np.asarray(data["y"], dtype=np.uint8).tofile(out / "labels.u8")
    print(f"{len(data['y'])} samples -> {out / 'inputs.f32'}, {out / 'labels.u8'}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
