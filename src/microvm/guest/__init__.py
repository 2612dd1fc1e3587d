"""Guest builders: the kernel and its modules, the initrd, the busybox and Debian systems, root images.

Each piece is a store entry named by its inputs; :mod:`microvm.runner.build` puts them together.
"""
