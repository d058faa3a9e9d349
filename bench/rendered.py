"""Rendered candidates as callables, for the hand sweeps and probes: Triton reads a kernel's source
from its file, so the code is written to a file (named by its hash) and imported from there."""
import hashlib
import importlib.util
import os
import tempfile


def entry_point(code: str, name: str):
    """The function `name` of a candidate module's source."""
    path = os.path.join(tempfile.gettempdir(), "cand_" + hashlib.sha1(code.encode()).hexdigest()[:12] + ".py")
    with open(path, "w") as f:
        f.write(code)
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)
