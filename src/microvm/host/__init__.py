"""The host side: accelerator, state directories, console, systemd units, networking."""
