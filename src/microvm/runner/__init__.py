"""The runner: building a VM (guest pieces + the hypervisor's command line) into a runner
directory, running it in the foreground, and the helper programs its scripts call.
"""
