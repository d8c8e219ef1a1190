#!/usr/bin/env python3
"""Reads a safetensors file with the reference Python implementation and prints it as JSON.

Usage: check_safetensors.py FILE

Output (one JSON object on stdout):
    {"metadata": {...}, "tensors": {NAME: {"dtype": "F32", "shape": [...], "values": [...]}}}

Values are flattened row-major; floats are printed as Python floats (exact for f32 and bf16), so a
caller can compare them bit for bit with what it wrote.

f32, f64, f16 and integer tensors are loaded with `safetensors.safe_open(..., framework="numpy")`,
i.e. through the library itself. numpy has no bfloat16, so for bf16 tensors the library gives the
dtype and shape (`get_slice`), and the values are decoded from the raw bytes at the offsets the
header records: a bf16 is the upper half of an f32, so widening the 16-bit words by 16 bits gives
the exact f32 value.

Exit status 3 when `safetensors` or `numpy` cannot be imported (the caller may skip), 1 on any other
error.
"""

import json
import struct
import sys

try:
    import numpy as np
    from safetensors import safe_open
except ImportError as e:  # the caller tells a missing module apart from a failed check
    print(f"missing module: {e}", file=sys.stderr)
    sys.exit(3)


def header(path):
    """The file's JSON header and the offset of its data section."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def bf16_values(path, entry, data_start):
    begin, end = entry["data_offsets"]
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        raw = f.read(end - begin)
    words = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return words.view(np.float32).astype(np.float64).tolist()


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 1
    path = sys.argv[1]
    raw_header, data_start = header(path)
    out = {"metadata": None, "tensors": {}}
    with safe_open(path, framework="numpy") as f:
        out["metadata"] = f.metadata()
        for name in f.keys():
            view = f.get_slice(name)
            dtype, shape = view.get_dtype(), list(view.get_shape())
            if dtype == "BF16":
                values = bf16_values(path, raw_header[name], data_start)
            else:
                array = f.get_tensor(name)
                if list(array.shape) != shape:
                    raise ValueError(f"{name}: numpy shape {array.shape} differs from the header's {shape}")
                values = array.reshape(-1).tolist()
            out["tensors"][name] = {"dtype": dtype, "shape": shape, "values": values}
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
