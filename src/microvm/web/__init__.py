"""``microvm web``: a page and a JSON API for the installed VMs, with live serial consoles.

Layered between the entry points and :mod:`microvm.host`: every action calls
the same host function as the command of that name (:mod:`.app`); consoles
fan one reader of a VM's console out to every viewer (:mod:`.console`);
:mod:`.serve` decides where it listens and who may ask (a unix socket's
permissions, or a per-start token, with TLS beyond loopback).
"""
