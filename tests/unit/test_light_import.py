"""`import qinfer` stays light: producers build requests without torch, triton or transformers."""
import subprocess
import sys

CHECK = """
import sys
import qinfer
qinfer.SamplingParams(temperature=0.5, stop=["x"])
heavy = sorted(m for m in ("torch", "triton", "transformers") if m in sys.modules)
print(",".join(heavy))
"""


def test_import_qinfer_leaves_heavy_modules_out():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
