"""Target profiles for `edgecl export` (one JSON file each), shipped inside the package as edgecl.targets."""
