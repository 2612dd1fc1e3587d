"""The option model: what a VM file and a host file may say (pydantic), with their defaults.

Pure: it reads no files and asks no backend; :mod:`microvm.config` loads files into it.
"""
