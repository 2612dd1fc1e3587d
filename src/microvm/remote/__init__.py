"""Several hosts: the SSH transport, copying store closures, deploy and live migration.

The other host's side is always its own ``microvm`` command (plumbing
subcommands such as ``microvm store receive``), reached through the user's
``ssh`` binary, so keys, known hosts and ProxyJump work as they do for ssh.
"""
