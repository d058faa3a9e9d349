"""Which target is this machine? The running device's name is matched against the targets'
device_name_patterns; with no GPU, kernels run under Triton's interpreter."""

from __future__ import annotations

from kevolve.errors import HardwareError
from kevolve.hardware.target import HardwareTarget, available_targets, load_target_file

INTERPRETER_TARGET = "cpu-interpreter"


def device_name() -> str | None:
    """The accelerator's name as the driver reports it, or None without one."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return None


def match_target(name: str) -> HardwareTarget:
    best: tuple[int, HardwareTarget] | None = None
    for path in available_targets().values():
        target = load_target_file(path)
        for pattern in target.device_name_patterns:
            if pattern.lower() in name.lower() and (best is None or len(pattern) > best[0]):
                best = (len(pattern), target)
    if best is None:
        raise HardwareError(f"no hardware target matches the device {name!r}; describe it in "
                            f"hardware/<name>.yaml with device_name_patterns: [{name!r}]")
    return best[1]


def detect_target() -> HardwareTarget:
    name = device_name()
    if name is None:
        from kevolve.hardware.target import load_target

        return load_target(INTERPRETER_TARGET)
    return match_target(name)
