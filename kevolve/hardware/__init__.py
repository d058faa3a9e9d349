"""Hardware targets, detection and measured ceilings."""

from kevolve.hardware.calibrate import Ceilings, calibrate, load_ceilings
from kevolve.hardware.detect import detect_target, device_name
from kevolve.hardware.target import HardwareTarget, available_targets, load_target

__all__ = ["Ceilings", "HardwareTarget", "available_targets", "calibrate", "detect_target",
           "device_name", "load_ceilings", "load_target"]
