"""Which kernel modules an initramfs needs, in the order to load them.

The guest's early userspace is busybox, whose ``insmod`` loads one file and
knows nothing of dependencies, so we do modprobe's work at build time from
depmod's index: hard dependencies (modules.dep) and soft ones
(modules.softdep ``pre:``/``post:``), each module once, built-in ones
skipped. Like kmod, ``-`` and ``_`` in names are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MicrovmError

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
SIGNATURE_MAGIC = b"~Module signature appended~\n"
SIGNATURE_INFO = 12  # struct module_signature, its last field the signature's length (big-endian)


def without_signature(module: bytes) -> bytes:
    """An uncompressed module without its appended signature (unchanged if it has none).

    Checking a signature is an RSA verification in the guest: about 70 ms per module under
    emulation. The modules come from the same verified package as the kernel that would check them.
    """
    if not module.endswith(SIGNATURE_MAGIC):
        return module
    info_end = len(module) - len(SIGNATURE_MAGIC)
    end = info_end - SIGNATURE_INFO - int.from_bytes(module[info_end - 4 : info_end], "big")
    return module[:end] if end > 0 else module


def module_name(path_or_name: str) -> str:
    """The canonical name: no directory, no ``.ko*`` suffix, ``-`` as ``_``."""
    name = path_or_name.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


@dataclass
class ModuleIndex:
    """depmod's view of one kernel's modules, keyed by canonical name."""

    release: str
    files: dict[str, str]  # module -> path relative to the modules dir
    deps: dict[str, list[str]]  # module -> hard deps, as listed (load last first)
    builtin: set[str] = field(default_factory=set)
    pre: dict[str, list[str]] = field(default_factory=dict)  # softdep pre: names or aliases
    post: dict[str, list[str]] = field(default_factory=dict)
    aliases: dict[str, list[str]] = field(default_factory=dict)  # exact alias -> modules
    builtin_aliases: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, modules_dir: Path) -> ModuleIndex:
        dep_file = modules_dir / "modules.dep"
        if not dep_file.exists():
            raise MicrovmError(
                f"{modules_dir} has no modules.dep",
                hint=f"run depmod -b <root> {modules_dir.name}",
            )
        files: dict[str, str] = {}
        deps: dict[str, list[str]] = {}
        for line in dep_file.read_text().splitlines():
            path, sep, rest = line.partition(":")
            if not sep:
                continue
            name = module_name(path)
            files[name] = path
            deps[name] = [module_name(d) for d in rest.split()]
        index = cls(release=modules_dir.name, files=files, deps=deps)
        builtin = modules_dir / "modules.builtin"
        if builtin.exists():
            index.builtin = {module_name(p) for p in builtin.read_text().split()}
        modinfo = modules_dir / "modules.builtin.modinfo"
        if modinfo.exists():
            for entry in modinfo.read_bytes().decode(errors="replace").split("\0"):
                key, _, value = entry.partition("=")
                if key.endswith(".alias"):
                    index.builtin_aliases.add(value.replace("-", "_"))
        softdep = modules_dir / "modules.softdep"
        if softdep.exists():
            index.add_softdeps(softdep.read_text())
        aliases = modules_dir / "modules.alias"
        if aliases.exists():
            for line in aliases.read_text().splitlines():
                words = line.split()
                if len(words) == 3 and words[0] == "alias" and not any(c in words[1] for c in "*?["):
                    index.aliases.setdefault(words[1].replace("-", "_"), []).append(module_name(words[2]))
        return index

    def add_softdeps(self, text: str) -> None:
        """Parse ``softdep MOD pre: A B post: C`` lines; words before a ``pre:``/``post:`` are ignored, as kmod does."""
        for line in text.splitlines():
            words = line.split()
            if len(words) < 3 or words[0] != "softdep":
                continue
            target = None
            for word in words[2:]:
                if word == "pre:":
                    target = self.pre
                elif word == "post:":
                    target = self.post
                elif target is not None:
                    target.setdefault(module_name(words[1]), []).append(word)

    def _lookup(self, name: str) -> list[str] | None:
        """Modules to load for a name or alias: [] if built in, None if unknown."""
        canonical = module_name(name)
        if canonical in self.files:
            return [canonical]
        if canonical in self.aliases:  # kmod's order: names, aliases, then built-ins
            return [m for m in self.aliases[canonical] if m in self.files]
        if canonical in self.builtin or canonical in self.builtin_aliases:
            return []
        return None

    def resolve(self, names: list[str]) -> list[str]:
        """Paths (relative to the modules dir) of ``names`` and all they need, dependencies first."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(module: str) -> None:
            if module in seen:
                return
            seen.add(module)
            for soft in self.pre.get(module, []):
                for dep in self._lookup(soft) or []:  # a soft dependency may be absent
                    visit(dep)
            for dep in reversed(self.deps[module]):
                visit(dep)
            order.append(module)
            for soft in self.post.get(module, []):
                for dep in self._lookup(soft) or []:
                    visit(dep)

        for name in names:
            found = self._lookup(name)
            if found is None:
                raise MicrovmError(
                    f"kernel module {name} does not exist in kernel {self.release}",
                    hint="its modules are listed in modules.dep (built-in ones in modules.builtin); pick another kernel or drop the module",
                )
            for module in found:
                visit(module)
        return [self.files[m] for m in order]


def resolve_modules(modules_dir: Path, names: list[str]) -> list[Path]:
    """The .ko files for ``names`` in a valid insmod order (see :class:`ModuleIndex`)."""
    index = ModuleIndex.load(modules_dir)
    return [modules_dir / rel for rel in index.resolve(names)]
