"""Load every TorchScript and ONNX export listed in jobs.json (cwd) with torch and onnxruntime alone, adaskip and timm
blocked from importing, and check each against its expected logits; prints one line per file, then "ok". Run by
tests/test_export.py."""

import json
import sys


class Block:  # adaskip and timm must not be needed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("adaskip", "timm"):
            raise ImportError("blocked: " + name)


sys.meta_path.insert(0, Block())
import onnxruntime as ort  # noqa: E402  (after the import block is in place)
import torch  # noqa: E402

torch.set_num_threads(1)
x = torch.load("x.pt")
for job in json.load(open("jobs.json")):
    if job["fmt"] == "torchscript":
        y = torch.jit.load(job["path"])(x)
    else:
        sess = ort.InferenceSession(job["path"], providers=["CPUExecutionProvider"])
        y = torch.from_numpy(sess.run(["logits"], {"input": x.numpy()})[0])
    ref = torch.load(job["expected"])
    diff = (y - ref).abs().max().item()
    assert diff <= 1e-4 * max(1.0, ref.abs().max().item()), (job, diff)
    print(job["fmt"], job["path"], diff)
assert not any(m.split(".")[0] in ("adaskip", "timm") for m in sys.modules)
print("ok")
