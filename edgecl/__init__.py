"""edgecl: a frozen backbone as the inference engine, tiny heads that keep learning on the device."""

__version__ = "0.1.0"
