"""The option model: what a VM file and a host file may say (pydantic), with their defaults.

Pure: it reads no files and asks no backend; :mod:`microvm.config` loads files into it. As microvm.nix
splits ``options.nix``, ``mounts.nix`` and ``asserts.nix``: :mod:`.options` declares the options,
:mod:`.desugar` computes the defaults that depend on other options and expands the shorthands,
:mod:`.addresses` holds the address arithmetic the host network shares; the cross-option checks are
:mod:`microvm.config.checks`.
"""
