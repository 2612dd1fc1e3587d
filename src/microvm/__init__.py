"""microvm: declarative, lightweight Linux virtual machines (microvm.nix without Nix)."""

__version__ = "0.1.0"
