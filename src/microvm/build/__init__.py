"""Guest builders: kernel, initrd, root images and runners, all in the store."""
