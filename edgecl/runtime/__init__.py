"""The device runtime: backbone engines and the learn/classify services. Imports no host-only code."""
